"""Fakes of the WeChat Official Account and WeCom platforms, speaking their real wire protocols.

* `FakeWeChatAPI` (tests/fakes/wechat_api.py): the HTTP APIs our adapters call - tokens,
  customer-service send (OA), app message send (WeCom) - with the platforms' limits and errors.
* `CallbackDriver` (tests/fakes/wechat_driver.py): the platform calling our callback URL - URL
  verification, signed / encrypted messages and events, 5 s timeout with 3 identical retries,
  verification of our encrypted passive replies, and forgeries for negative tests.
* tests/fakes/wechat_crypto.py: signatures, the AES scheme, XML helpers, official sample values.

    with FakeWeChatAPI() as api:
        driver = CallbackDriver.oa(f"{server}/wechat/oa", mode="safe", api=api)
        result = await driver.send_text(OA_OPENID, "hi")   # also opens the 48 h window on `api`
        await api.async_wait_delivered(1)
        assert api.texts(OA_OPENID) == ["echo: hi"]

The crypto is implemented independently of wechatpy (cryptography + hashlib) so that the
conformance tests really cross-check our adapters against a second implementation.
"""

from __future__ import annotations

from tests.fakes.wechat_api import OA_SECRET, WECOM_SECRET, Delivery, FakeWeChatAPI, RecordedRequest, WeComApp
from tests.fakes.wechat_crypto import (
    OA_AES_KEY,
    OA_APPID,
    OA_OPENID,
    OA_ORIGINAL_ID,
    OA_TOKEN,
    WECOM_AES_KEY,
    WECOM_AGENT_ID,
    WECOM_CORPID,
    WECOM_TOKEN,
    WECOM_USERID,
    WeChatCipher,
    build_xml,
    oversized_body,
    sha1_signature,
    xml_bomb,
    xml_to_dict,
    xxe_payload,
)
from tests.fakes.wechat_driver import (
    Attempt,
    CallbackDriver,
    CallbackRequest,
    CallbackResult,
    Forgery,
    ReplyVerificationError,
)

__all__ = [
    "OA_AES_KEY",
    "OA_APPID",
    "OA_OPENID",
    "OA_ORIGINAL_ID",
    "OA_SECRET",
    "OA_TOKEN",
    "WECOM_AES_KEY",
    "WECOM_AGENT_ID",
    "WECOM_CORPID",
    "WECOM_SECRET",
    "WECOM_TOKEN",
    "WECOM_USERID",
    "Attempt",
    "CallbackDriver",
    "CallbackRequest",
    "CallbackResult",
    "Delivery",
    "FakeWeChatAPI",
    "Forgery",
    "RecordedRequest",
    "ReplyVerificationError",
    "WeChatCipher",
    "WeComApp",
    "build_xml",
    "oversized_body",
    "sha1_signature",
    "xml_bomb",
    "xml_to_dict",
    "xxe_payload",
]
