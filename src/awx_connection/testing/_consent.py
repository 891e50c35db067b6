"""
The fake's consent page, read as a browser reads it.

In process, ``FakeAirwallex.approve(url)`` consents for you. A test that
drives a separate ``awx-connection fake-server`` process over HTTP (as a
service's own end-to-end test does) has only the page: this finds its
Allow form, so the test can post exactly what a customer's click would.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import final

import attrs

__all__ = ["ConsentForm", "consent_form"]


@final
@attrs.frozen
class ConsentForm:
    """Where the Allow button posts, and the fields it sends."""

    #: The form's ``action``, relative to the consent page's URL.
    action: str
    fields: dict[str, str]


class _AllowForm(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: ConsentForm | None = None
        self._action: str | None = None
        self._hidden: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._action, self._hidden = values.get("action", ""), {}
        elif tag == "input" and values.get("type") == "hidden":
            self._hidden[values["name"]] = values.get("value", "")
        elif tag == "button" and values.get("value") == "allow" and self._action is not None:
            self.found = ConsentForm(self._action, {**self._hidden, values["name"]: "allow"})


def consent_form(html: str) -> ConsentForm:
    """
    The Allow form of the fake's consent page *html*: post ``fields`` to
    ``urljoin(page_url, action)`` to consent as the customer would.

    Raises:
        ValueError: The page has no Allow form (not the consent page, or an
            error page: the authorize URL was refused).
    """
    parser = _AllowForm()
    parser.feed(html)
    parser.close()
    if parser.found is None:
        msg = "no Allow form on the page: is it the fake's consent page?"
        raise ValueError(msg)
    return parser.found
