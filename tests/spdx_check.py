"""An SBOM checked by the SPDX project's own tools (spdx-tools), not by our writer.
Shared by the compose and provenance tests."""

from __future__ import annotations

from pathlib import Path


def validate(path: Path) -> list[str]:
    """spdx-tools (the SPDX project's own Python tools): parse, then validate the document."""
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    return [m.validation_message for m in validate_full_spdx_document(parse_file(str(path)))]
