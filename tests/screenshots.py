"""Take the README's screenshots of the sign-up, Profile, Activity and operator pages: ``python -m tests.screenshots``.

A whole gateway in this process (fake OpenAI upstream, the Redis at ``REDIS_URL`` or the embedded one),
a real sign-up and real calls through the OpenAI SDK in Chromium's view; earlier days of the usage chart
are filled with the worker's own usage writer so the chart shows its shape. Writes docs/signup.png,
docs/profile.png, docs/activity.png and docs/dashboard.png.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import openai
from playwright.sync_api import sync_playwright

from common.names import Names
from common.redis import connect
from common.settlement import record_usage
from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness
from tests.pages import ADMIN_KEY, FREE, PAID, PASSWORD, accounts_env

DOCS = Path(__file__).resolve().parent.parent / "docs"
VIEWPORT = {"width": 1100, "height": 760}


def main() -> None:
    chromium = os.environ.get("MEGABRAIN_CHROMIUM", "/usr/bin/chromium")
    with tempfile.TemporaryDirectory() as tmp, ThreadedServer(create_openai_app(OpenAIFakeState())) as upstream:
        env = accounts_env(os.environ.get("REDIS_URL"), upstream.url + "/v1", Path(tmp))
        with GatewayHarness.from_env(env) as gw, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(gw.url + "/signup")
            page.get_by_label("Email").fill("ada@example.org")
            page.get_by_label("Password").fill(PASSWORD)
            page.screenshot(path=str(DOCS / "signup.png"))
            page.get_by_role("button", name="Sign up").click()
            page.get_by_label("Password").fill(PASSWORD)  # sign-up says "now log in"; the email is filled in
            page.get_by_role("button", name="Log in", exact=True).click()
            key = page.get_by_label("New API key").inner_text().strip()
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
            for model in (PAID, PAID, FREE):
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}])
            gw.run(_earlier_days(env, key))
            time.sleep(1.0)  # the worker batches its usage writes
            page.goto(gw.url + "/profile")
            page.get_by_label("Key name").fill("laptop")
            page.get_by_role("button", name="Create key").click()
            page.screenshot(path=str(DOCS / "profile.png"), full_page=True)
            client.chat.completions.create(model=PAID, messages=[{"role": "user", "content": "Hello"}], stream=True)
            page.get_by_role("link", name="Activity").click()
            page.screenshot(path=str(DOCS / "activity.png"), full_page=True)
            operator = browser.new_page(viewport=VIEWPORT, extra_http_headers={"authorization": f"Bearer {ADMIN_KEY}"})
            operator.goto(gw.url + "/operator")
            operator.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
            browser.close()
    print(f"wrote {DOCS}/signup.png, profile.png, activity.png and dashboard.png", file=sys.stderr)


async def _earlier_days(env: dict[str, str], key: str) -> None:
    from api.access.keys import KeyStore

    redis = connect(env.get("REDIS_URL"))
    try:
        names = Names(env["MEGABRAIN_NAMESPACE"])
        record = await KeyStore(redis, names).lookup(key)
        assert record is not None
        for days_ago, requests in [(1, 9), (2, 14), (3, 6), (5, 11), (6, 18), (8, 4), (9, 12), (12, 7)]:
            for _ in range(requests):
                await record_usage(redis, names, record.id, PAID, 40, 120, "0.00131",
                                   now=time.time() - days_ago * 86400, account=record.owner)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    main()
