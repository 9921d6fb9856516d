"""The admin console in a real browser: Debian's Chromium driven by Playwright against the live server.

Each page is screenshotted; `make screenshots` runs these tests with SCREENSHOTS_DIR=docs/screenshots
to refresh the README's pictures (otherwise they go to a temporary folder).
"""

import json
import os
import shutil
import threading
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.utils import timezone

from inference.auth import clear_auth_cache
from models_app.choices import UsageStatus
from models_app.models import ModelConfig, UsageRecord
from models_app.services import PLAYGROUND_TOKEN_NAME, finalize_usage, issue_token, start_usage
from tests.conftest import wait_for
from tests.inference.conftest import NO_EOS_BIAS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium`"),
]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("SCREENSHOTS_DIR")
    return Path(settings.BASE_DIR, folder) if folder else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread while the module runs; the ORM
    # calls of the tests and of the database teardown are still plain sync ones.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            yield browser
            browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(browser, live_server_url, admin_user):
    """A page logged in to the admin as the superuser, through the login form."""
    clear_auth_cache()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "response",
        lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 and "favicon" not in r.url else None,
    )
    page.goto(f"{live_server_url}/admin/login/?next=/admin/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "pw-for-tests-only")
    page.click("input[type=submit]")
    page.wait_for_selector("#dashboard")
    yield page
    context.close()
    assert not errors, errors  # a script error on any page fails its test
    clear_auth_cache()


def _usage(request_id, token, model, status, completion=10, ttft=50.0, duration=250.0):
    start_usage(request_id=request_id, endpoint="chat.completions", token_id=token.pk, model_id=model.id,
                client_address="127.0.0.1")  # fmt: skip
    finalize_usage(request_id=request_id, status=status, prompt_tokens=20, completion_tokens=completion,
                   time_to_first_token_ms=ttft, duration_ms=duration)  # fmt: skip


def test_dashboard_shows_the_rows_made_here(page, shots, live_server_url, small_model, admin_user):
    scripts, _ = issue_token(name="scripts", owner=admin_user, scopes=["inference"])
    for i, hours_ago in enumerate((0, 3, 7)):  # three hours of the 24-hour chart
        _usage(f"req_ok{i}", scripts, small_model, UsageStatus.COMPLETED, ttft=40.0 + 30 * i)
        UsageRecord.objects.filter(request_id=f"req_ok{i}").update(
            created_at=timezone.now() - timedelta(hours=hours_ago)
        )
    _usage("req_bad", scripts, small_model, UsageStatus.ERROR, completion=0)
    page.goto(f"{live_server_url}/admin/")
    day = page.locator("#window-24h")
    assert day.locator(f".per-token tr[data-token='{scripts.pk}'] .requests").inner_text() == "4"
    assert day.locator(f".per-model tr[data-model='{small_model.id}'] .requests").inner_text() == "4"
    assert day.locator(".statuses tr[data-status='completed'] td.num").inner_text() == "3"
    assert day.locator(".statuses tr[data-status='error'] td.num").inner_text() == "1"
    assert page.locator("#health [data-check='database'] .ok").count() == 1
    assert day.locator("svg.chart").first.locator("rect").count() == 3  # requests per model: three hours
    assert UsageRecord.objects.filter(rolled_up=False).count() == 0
    page.screenshot(path=shots / "dashboard.png", full_page=True)
    page.click("text=Apps and models")
    page.wait_for_url("**/admin/apps/")  # the click navigates; read the new page, not the old one
    assert page.locator("#content h1").inner_text() == "Apps and models"


def test_live_view_shows_a_running_generation(page, shots, live_server_url, small_model, api_token):
    done = threading.Event()
    seen: dict[str, str] = {}

    def generate() -> None:
        body = {"model": small_model.id, "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": 3000, "stream": True, "logit_bias": NO_EOS_BIAS}  # fmt: skip
        headers = {"Authorization": f"Bearer {api_token[1]}"}
        with httpx.stream("POST", f"{live_server_url}/v1/chat/completions", json=body, headers=headers,
                          timeout=120) as response:  # fmt: skip
            seen["request_id"] = response.headers["x-request-id"]
            for _ in response.iter_lines():
                if done.is_set():
                    return  # closing the stream cancels the generation

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: "request_id" in seen, timeout=60)
        page.goto(f"{live_server_url}/admin/live/")
        row = page.locator(
            f"section[data-model='{small_model.id}'] table.slots tr[data-request='{seen['request_id']}']"
        )
        row.wait_for(timeout=30_000)
        assert "decode" in row.inner_text() or "prefill" in row.inner_text()
        page.screenshot(path=shots / "live.png", full_page=True)
    finally:
        done.set()
        thread.join(timeout=60)
    assert wait_for(lambda: UsageRecord.objects.get(request_id=seen["request_id"]).status == UsageStatus.CANCELLED)


def test_playground_streams_an_answer_and_stop_cancels(
    page, shots, live_server_url, small_model, api_token, fresh_engine
):
    ModelConfig.objects.filter(model=small_model).update(n_parallel=1)  # the blocker below holds the only slot
    page.goto(f"{live_server_url}/admin/playground/")
    page.fill("#pg-max_tokens", "6")
    page.fill("#pg-message", "Say hello.")
    page.click("#pg-send")
    answer = page.locator("#transcript .turn.assistant").last
    page.wait_for_function("() => document.querySelector('#pg-send').disabled === false", timeout=60_000)
    assert answer.locator(".content").inner_text().strip()
    stats = answer.locator(".stats").inner_text()
    assert "tokens/s" in stats and "time to first token" in stats and "finish: length" in stats
    row = UsageRecord.objects.select_related("token").get(endpoint="ws.generate")
    assert (row.status, row.token.name, row.token.owner.username) == ("completed", PLAYGROUND_TOKEN_NAME, "root")
    page.click("#pg-curl")
    assert "/v1/chat/completions" in page.locator("#curl").inner_text()
    page.screenshot(path=shots / "playground.png", full_page=True)

    # Stop: with the only slot held by another request, the next message waits in the queue until stopped.
    blocker_done = threading.Event()

    def block() -> None:
        body = {"model": small_model.id, "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 3000,
                "stream": True, "logit_bias": NO_EOS_BIAS}  # fmt: skip
        with httpx.stream("POST", f"{live_server_url}/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {api_token[1]}"}, timeout=120) as response:  # fmt: skip
            for _ in response.iter_lines():
                if blocker_done.is_set():
                    return

    thread = threading.Thread(target=block, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: UsageRecord.objects.filter(endpoint="chat.completions").exists(), timeout=60)
        page.fill("#pg-message", "And again.")
        page.click("#pg-send")
        answer = page.locator("#transcript .turn.assistant").last
        answer.locator(".stats", has_text="queued").wait_for(timeout=30_000)
        page.click("#pg-stop")
        answer.locator(".stats", has_text="finish: cancelled").wait_for(timeout=30_000)
    finally:
        blocker_done.set()
        thread.join(timeout=60)
    stopped = UsageRecord.objects.filter(endpoint="ws.generate").order_by("-created_at").first()
    assert (stopped.status, stopped.token.name) == ("cancelled", PLAYGROUND_TOKEN_NAME)


def test_stop_cancels_a_streaming_answer(page, live_server_url, small_model):
    # As a user could with the browser's devtools: this page's generate frames also ban the end
    # tokens, so the answer streams until Stop (3000 tokens, a minute or more here).
    page.add_init_script(
        "const send = WebSocket.prototype.send; WebSocket.prototype.send = function (data) {"
        " const frame = JSON.parse(data); if (frame.type === 'generate') { frame.logit_bias = "
        + json.dumps(NO_EOS_BIAS)
        + "; } return send.call(this, JSON.stringify(frame)); };"
    )
    page.goto(f"{live_server_url}/admin/playground/")
    page.fill("#pg-max_tokens", "3000")
    page.fill("#pg-message", "Tell me a long story.")
    page.click("#pg-send")
    answer = page.locator("#transcript .turn.assistant").last
    page.wait_for_function(
        "() => document.querySelector('#transcript .turn.assistant .content').textContent.length > 20"
    )
    page.click("#pg-stop")
    answer.locator(".stats", has_text="finish: cancelled").wait_for(timeout=30_000)
    row = UsageRecord.objects.select_related("token").get(endpoint="ws.generate")
    assert (row.status, row.token.name) == ("cancelled", PLAYGROUND_TOKEN_NAME)
    assert 0 < row.completion_tokens < 3000


def test_usage_list_fits_and_exports_the_filtered_rows(page, shots, live_server_url, small_model, admin_user):
    kept, _ = issue_token(name="kept", owner=admin_user, scopes=["inference"])
    other, _ = issue_token(name="other", owner=admin_user, scopes=["inference"])
    _usage("req_kept", kept, small_model, UsageStatus.COMPLETED)
    _usage("req_other", other, small_model, UsageStatus.COMPLETED)
    page.goto(f"{live_server_url}/admin/models_app/usagerecord/?token__id__exact={kept.pk}")
    # Every column in view at 1400 px: the list needs no sideways scrolling.
    assert page.evaluate(
        "() => { const r = document.querySelector('.results'); return r.scrollWidth <= r.clientWidth; }"
    )
    assert page.locator("#result_list tbody tr").count() == 1
    page.screenshot(path=shots / "usage.png", full_page=True)
    with page.expect_download() as download:
        page.click("text=Export CSV")
    lines = Path(download.value.path()).read_text().splitlines()
    assert len(lines) == 2 and "req_kept" in lines[1]
    # The token's page links to its usage.
    page.goto(f"{live_server_url}/admin/models_app/apitoken/{kept.pk}/change/")
    page.click("text=usage rows")
    page.wait_for_url(f"**/usagerecord/?token__id__exact={kept.pk}")  # the click navigates: wait for it
    assert page.locator("#result_list tbody tr").count() == 1
