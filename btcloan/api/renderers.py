"""The API's JSON renderer: DRF's output, encoded by orjson.

DRF's JSONRenderer (stdlib json with a Python `default` hook) was ~2 ms of a page of 50 loans
(72 kB, bench/api_bench.py); orjson writes the same bytes in a fraction of it. Everything it
would spell differently from DRF goes back to DRF: dates and times (orjson's own format is not
DRF's), dataclasses (DRF refuses them), an indented or non-compact response, and whatever orjson
cannot encode (an integer past 64 bits, a key that is not a string). The API serves no float
(money is int or Decimal, shown as strings or integers); one would be the same number, though
orjson spells 1.5e-7 where json writes 1.5e-07, and NaN null where DRF refuses it.
tests/api/test_renderer.py compares the bytes with DRF's own.
"""

from __future__ import annotations

from typing import Any

import orjson
from rest_framework import renderers

# DRF's defaults (UNICODE_JSON, COMPACT_JSON): UTF-8 as is, no spaces, as orjson writes.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class JSONRenderer(renderers.JSONRenderer):
    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: dict[str, Any] | None = None,
    ) -> bytes:
        if (
            data is None
            or self.ensure_ascii
            or not self.compact
            or self.get_indent(accepted_media_type, renderer_context or {}) is not None
        ):
            return super().render(data, accepted_media_type, renderer_context)
        try:
            rendered = orjson.dumps(data, default=self.encoder_class().default, option=_OPTIONS)
        except TypeError:  # orjson.JSONEncodeError: what only stdlib json encodes, or nobody
            return super().render(data, accepted_media_type, renderer_context)
        # As DRF: U+2028 and U+2029 escaped, so the JSON is also valid JavaScript.
        return rendered.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
