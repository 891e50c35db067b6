"""
Synchronous use: the manager on an event-loop thread of its own.

A public namespace of its own (``awx_connection.blocking``, as
``awx_connection.aiohttp`` is the aiohttp glue), for Django, Flask and other
WSGI apps whose views are plain functions on a pool of threads.
`BlockingManager` starts a real
`ConnectionManager` on a thread that runs an asyncio
event loop, and each of its methods hands one call to that loop and blocks
until it is answered, so many threads calling at once still share one
token cache and one refresh in flight per connection. See the "Synchronous
code" page of the docs for the threading model.

This module only re-exports; the implementation lives in the private
``_blocking`` (the façade) and ``_portal`` (the loop thread) modules.
"""

from ._blocking import ApiResponse, BlockingManager, BlockingSubscription, Headers, WebhookReply
from ._portal import BlockingState

__all__ = [
    "ApiResponse",
    "BlockingManager",
    "BlockingState",
    "BlockingSubscription",
    "Headers",
    "WebhookReply",
]

# Show public names as awx_connection.blocking.X in reprs and docs.
for _obj in (
    ApiResponse,
    BlockingManager,
    BlockingState,
    BlockingSubscription,
    Headers,
    WebhookReply,
):
    _obj.__module__ = __name__
del _obj
