"""Untrusted callback XML and signatures, shared by the WeChat and WeCom adapters.

Every document is read with defusedxml first: wechatpy parses with xmltodict/expat, which would
expand entities (a "billion laughs" bomb) or resolve an external DTD if the document asked for it.
"""

from __future__ import annotations

import hashlib
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException


class CallbackRejected(Exception):
    """The callback is refused with `status`; `reason` goes to one log line (never the body)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sha1_signature(*parts: str) -> str:
    """WeChat's signature: sha1 over the sorted, concatenated parts."""
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def parse_xml(data: bytes | str) -> dict[str, str]:
    """A flat `<xml>` document as a dict; DTDs, entities and malformed XML are refused (400)."""
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, ParseError, ValueError) as exc:
        raise CallbackRejected(400, f"unsafe or malformed XML ({type(exc).__name__})") from None
    if root.tag != "xml":
        raise CallbackRejected(400, "XML root is not <xml>")
    return {child.tag: child.text or "" for child in root}
