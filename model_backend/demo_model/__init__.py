"""The bundled demo model: procedural chest phantoms it is trained and evaluated on."""
