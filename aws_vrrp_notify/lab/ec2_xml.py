"""EC2 query-protocol answers written by the lab itself (not by moto): errors and successes."""

from __future__ import annotations

import uuid
from xml.sax.saxutils import escape

EC2_NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
XML_CONTENT_TYPE = "text/xml;charset=UTF-8"


def error_body(code: str, message: str) -> bytes:
    """EC2's error document (HTTP 4xx/5xx): one ``Error`` with its code and message."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message></Error></Errors>"
            f"<RequestID>{uuid.uuid4()}</RequestID></Response>").encode()


def success_body(action: str, inner: str = "<return>true</return>") -> bytes:
    """EC2's answer document ``<{action}Response>`` with a request id and ``inner`` (already XML)."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{EC2_NAMESPACE}">'
            f"<requestId>{uuid.uuid4()}</requestId>{inner}</{action}Response>").encode()


def item_set(tag: str, values, item_tag: str | None = None) -> str:
    """``<tag><item>v</item>...</tag>``, or ``<tag><item><item_tag>v</item_tag></item>...</tag>``."""
    if item_tag is None:
        items = "".join(f"<item>{escape(v)}</item>" for v in values)
    else:
        items = "".join(f"<item><{item_tag}>{escape(v)}</{item_tag}></item>" for v in values)
    return f"<{tag}>{items}</{tag}>"


def element(tag: str, value: str) -> str:
    return f"<{tag}>{escape(value)}</{tag}>"
