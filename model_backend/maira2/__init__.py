"""Native MAIRA-2 (config, model, processor, parsers) for transformers 5, without remote code."""

from model_backend.maira2.configuration import Maira2Config
from model_backend.maira2.modeling import Maira2ForConditionalGeneration
from model_backend.maira2.processing import Maira2Processor

__all__ = ["Maira2Config", "Maira2ForConditionalGeneration", "Maira2Processor"]
