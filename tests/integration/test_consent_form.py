"""testing.consent_form: the fake's consent page, clicked over real HTTP as a browser would."""

from __future__ import annotations

from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import pytest

from awx_connection import ConnectionManager, ConnectionState
from awx_connection.testing import FakeAirwallex, consent_form


async def test_posting_the_allow_form_redirects_with_a_code_that_completes(
    awx_manager: ConnectionManager, awx_fake: FakeAirwallex
) -> None:
    """What a customer's Allow click sends: the redirect carries a code the manager accepts."""
    request = await awx_manager.begin_authorization()
    async with aiohttp.ClientSession() as http:
        async with http.get(request.url) as page:
            assert 200 == page.status
            form = consent_form(await page.text())
        assert "allow" in form.fields.values()
        async with http.post(
            urljoin(request.url, form.action), data=form.fields, allow_redirects=False
        ) as answer:
            assert 302 == answer.status
            callback = answer.headers["Location"]
    assert parse_qs(urlsplit(callback).query)["code"]
    connection = await awx_manager.complete_authorization(callback)
    assert ConnectionState.ACTIVE is connection.state


def test_a_page_without_the_allow_form_is_a_clear_error() -> None:
    """An error page (a refused authorize URL) is not mistaken for consent."""
    with pytest.raises(ValueError, match="no Allow form"):
        consent_form("<html><body><p>invalid client_id</p></body></html>")
    with pytest.raises(ValueError, match="no Allow form"):
        consent_form('<form action="/x"><button name="decision" value="deny">No</button></form>')
