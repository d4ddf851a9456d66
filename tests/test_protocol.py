"""CXRReportGen scoring protocol: request/response codec and its validation errors."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from model_backend.protocol import (
    ProtocolError,
    ScoringRow,
    decode_output,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_body,
    report_to_output,
)
from model_backend.types import BackendInfo, Box, Finding, PromptContext, Report


def _image_bytes(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    pixels = (np.arange(size[0] * size[1]) % 251).astype(np.uint8).reshape(size[1], size[0])
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


PNG = _image_bytes("PNG")
JPEG = _image_bytes("JPEG")
DICOM_LIKE = b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00"


def _b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("utf-8")


def _request(columns: list[str], data: list[list], index: list | None = None) -> dict:
    input_data: dict = {"columns": columns, "data": data}
    if index is not None:
        input_data["index"] = index
    return {"input_data": input_data, "params": {}}


def _report(findings: tuple[Finding, ...]) -> Report:
    return Report(
        study_id="s1",
        context=PromptContext(),
        findings=findings,
        image_width=700,
        image_height=500,
        raw_text="",
        complete=True,
        backend=BackendInfo(name="test", model_id="none"),
    )


def test_round_trip_request_keeps_every_field() -> None:
    rows = [
        ScoringRow(
            index="a",
            frontal_image=PNG,
            lateral_image=JPEG,
            prior_image=PNG,
            indication="Dyspnea.",
            technique="PA and lateral.",
            comparison="None.",
            prior_report="Normal.",
        ),
        ScoringRow(index="b", frontal_image=JPEG),
    ]
    request = encode_request(rows)
    assert "\n" in request["input_data"]["data"][0][0]  # encodebytes line breaks, as the docs' clients send
    assert decode_request(json.dumps(request)) == rows
    assert decode_request(json.dumps(request).encode()) == rows
    assert decode_request(request) == rows


def test_encode_request_only_sends_used_columns() -> None:
    request = encode_request([ScoringRow(index=0, frontal_image=PNG, indication="Cough.")])
    assert request["input_data"]["columns"] == ["frontal_image", "indication"]
    assert request["input_data"]["index"] == [0]


def test_missing_index_numbers_rows_and_missing_sections_are_none() -> None:
    body = _request(
        ["frontal_image", "indication", "technique", "comparison"],
        [[_b64(PNG), None, "", math.nan], [_b64(JPEG), "Fever.", "  ", None]],
    )
    rows = decode_request(json.dumps(body))  # json writes NaN, json.loads reads it back
    assert [r.index for r in rows] == [0, 1]
    assert (rows[0].indication, rows[0].technique, rows[0].comparison) == (None, None, None)
    assert rows[1].indication == "Fever." and rows[1].technique is None
    assert rows[0].frontal_image == PNG and rows[1].frontal_image == JPEG


def test_dicom_is_accepted_as_an_extension() -> None:
    (row,) = decode_request(_request(["frontal_image"], [[_b64(DICOM_LIKE)]]))
    assert row.frontal_image == DICOM_LIKE


def test_ten_rows_accepted_eleven_rejected() -> None:
    assert len(decode_request(_request(["frontal_image"], [[_b64(PNG)]] * 10))) == 10
    with pytest.raises(ProtocolError, match="11 rows, at most 10") as info:
        decode_request(_request(["frontal_image"], [[_b64(PNG)]] * 11))
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("columns", "data", "index", "row", "column", "message"),
    [
        (["frontal_image", "view"], [["x", "PA"]], None, None, "view", "unknown column"),
        (["frontal_image", "indication", "indication"], [["x", "a", "b"]], None, None, "indication", "duplicate"),
        (["lateral_image"], [["x"]], None, None, "frontal_image", "required"),
        (["frontal_image", "indication"], [[_b64(PNG)], [_b64(PNG), "a"]], ["r1", "r2"], "r1", None, "1 cells"),
        (["frontal_image"], [[_b64(PNG)], [""]], ["r1", "r2"], "r2", "frontal_image", "empty"),
        (["frontal_image"], [[None]], [7], 7, "frontal_image", "empty"),
        (["frontal_image", "indication"], [[_b64(PNG), 42]], ["q"], "q", "indication", "expected text"),
        (["frontal_image"], [["not base64!"]], ["q"], "q", "frontal_image", "invalid base64"),
        (["frontal_image"], [[_b64(b"GIF89a" + b"\x00" * 200)]], ["q"], "q", "frontal_image", "not a PNG"),
        (["frontal_image", "lateral_image"], [[_b64(PNG), _b64(b"hello")]], ["q"], "q", "lateral_image", "not a PNG"),
        (["frontal_image"], [[123]], ["q"], "q", "frontal_image", "expected base64 text"),
    ],
)
def test_validation_errors_name_row_and_column(
    columns: list[str], data: list[list], index: list | None, row: object, column: str | None, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        decode_request(json.dumps(_request(columns, data, index)))
    err = info.value
    assert (err.row, err.column, err.status) == (row, column, 400)
    if row is not None:
        assert repr(row) in str(err)
    if column is not None:
        assert repr(column) in str(err)
    assert error_body(err) == {"error": {"message": str(err), "row": row, "column": column}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"input_data": {"columns": ["frontal_image"], "data": []}}', "no rows"),
        (
            '{"input_data": {"columns": ["frontal_image"], "data": [["x"]], "index": [1, 2]}}',
            "index must be a list of 1",
        ),
        ('{"input_data": {"columns": ["frontal_image"], "data": [["x"]], "index": [true]}}', "index values"),
        ('{"input_data": {"columns": "frontal_image", "data": [["x"]]}}', "columns must be a list"),
        ('{"input_data": {"columns": ["frontal_image"], "data": ["x"]}}', "list of rows"),
        ('{"input_data": {"columns": ["frontal_image"], "data": [["x"]]}, "params": []}', "params"),
    ],
)
def test_malformed_top_level_is_rejected(body: str | bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        decode_request(body)
    assert info.value.status == 400 and info.value.row is None


def test_oversized_payload_is_413() -> None:
    body = _request(["frontal_image"], [[_b64(PNG)]])
    with pytest.raises(ProtocolError) as info:
        decode_request(json.dumps(body), max_bytes=100)
    assert info.value.status == 413
    with pytest.raises(ProtocolError) as info:
        decode_request(body, max_bytes=100)
    assert info.value.status == 413
    assert len(decode_request(body, max_bytes=10_000)) == 1


def test_response_writes_json_string_with_exact_model_frame_boxes() -> None:
    report = _report(
        (
            Finding("Left basal opacity.", (Box(0.125, 0.625, 0.455, 0.985), Box(0.005, 0.015, 0.995, 0.505))),
            Finding("No pneumothorax.", None),
            Finding("Empty box tuple.", ()),
        )
    )
    expected = [
        ["Left basal opacity.", [[0.125, 0.625, 0.455, 0.985], [0.005, 0.015, 0.995, 0.505]]],
        ["No pneumothorax.", None],
        ["Empty box tuple.", None],
    ]
    assert report_to_output(report) == expected
    (item,) = encode_response([report])
    assert isinstance(item["output"], str) and json.loads(item["output"]) == expected
    decoded = decode_response(json.dumps([item]))
    assert decoded == [
        [
            ("Left basal opacity.", [Box(0.125, 0.625, 0.455, 0.985), Box(0.005, 0.015, 0.995, 0.505)]),
            ("No pneumothorax.", None),
            ("Empty box tuple.", None),
        ]
    ]


def test_output_decodes_from_string_and_from_list() -> None:
    findings = [["Nodule.", [[0.1, 0.2, 0.3, 0.4]]], ["Normal heart.", None]]
    expected = [("Nodule.", [Box(0.1, 0.2, 0.3, 0.4)]), ("Normal heart.", None)]
    assert decode_output(findings) == expected
    assert decode_output(json.dumps(findings)) == expected
    assert decode_response([{"output": findings}, {"output": json.dumps(findings)}]) == [expected, expected]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("[[", "not valid JSON"),
        ({"a": 1}, "must be a list"),
        ([["only sentence"]], "finding 0: expected"),
        ([[3, None]], "finding 0: expected"),
        ([["ok", None], ["s", "box"]], "finding 1: boxes must be null or a list"),
        ([["s", [[0.1, 0.2, 0.3]]]], r"finding 0: a box must be \[x_min"),
        ([["s", [[0.1, 0.2, 0.3, "0.4"]]]], "finite numbers"),
        ([["s", [[0.1, 0.2, 0.3, True]]]], "finite numbers"),
        ('[["s", [[0.1, 0.2, 0.3, NaN]]]]', "finite numbers"),
        ('[["s", [[0.1, 0.2, 0.3, Infinity]]]]', "finite numbers"),
    ],
)
def test_bad_output_is_rejected(output: object, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        decode_response([{"output": "[]"}, {"output": output}])
    assert (info.value.row, info.value.column) == (1, "output")


def test_bad_response_shape_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="JSON list"):
        decode_response('{"output": "[]"}')
    with pytest.raises(ProtocolError, match='"output" key') as info:
        decode_response([{"output": []}, {"result": []}])
    assert info.value.row == 1


def test_decode_response_rejects_a_dict_body_with_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="expected a JSON list"):
        decode_response({"error": {"message": "bad key"}})
