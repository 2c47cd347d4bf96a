"""Every channel example in docs/channels.md loads as a catalog and Apprise accepts its URLs.

Nothing is sent: Apprise only parses each URL into its notifier. The desktop notifiers need the
D-Bus bindings in this Python; where they are missing, Apprise turns them off, and the test
checks that the notifier's own parser still reads the URL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import apprise
import pytest
import yaml
from apprise.manager_plugins import NotificationManager

from sglguard.config.loader import parse_catalog

DOC = Path(__file__).parent.parent / "docs" / "channels.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
ENVIRONMENT = {
    "SMTP_PASSWORD": "s3cret", "GMAIL_APP_PASSWORD": "abcdabcdabcdabcd",
    "WECOM_BOT_KEY": "693a91f6-7d2e-4bc4-97a0-0ec2a1fa5aaa",
    "DINGTALK_TOKEN": "4c1fe7c0e2cbd2a7c98fe2b2bd3f5b25d0e1b5c3e8b37bb26c2f0d3b4e5a6f7a",
    "DINGTALK_SECRET": "SEC0123456789abcdef0123456789abcdef",
    "FEISHU_BOT_TOKEN": "0f7d4e8a-1234-4bcd-9ef0-123456789abc",
    "LARK_BOT_TOKEN": "0f7d4e8a-1234-4bcd-9ef0-123456789abd",
    "SLACK_WEBHOOK_PATH": "T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",
    "SLACK_BOT_TOKEN": "xoxb-1234-1234-4ddbc191d40ee098cbaae6f3523ada2d",
    "NTFY_TOPIC": "sglguard-gpu-07-k3j5h2", "NTFY_TOKEN": "tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2",
    "NTFY_PASSWORD": "s3cret", "HOOK_TOKEN": "abc123",
}
CHANNELS = ("mailto", "mailtos", "dbus", "gnome", "wecombot", "dingtalk", "feishu", "lark",
            "slack", "ntfys", "json", "jsons")


def notifier_urls(block: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "sglguard.yaml"
    path.write_text('version: 1\ntargets: [{name: local, url: "http://127.0.0.1:1"}]\n' + block)
    catalog = parse_catalog(path.read_text(), path)
    return [url.get_secret_value() for notifier in catalog.notifiers for url in notifier.urls]


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)


def test_the_doc_covers_every_channel_asked_for() -> None:
    schemes = {url.split("://", 1)[0] for block in BLOCKS
               for notifier in yaml.safe_load(block)["notifiers"] for url in notifier["urls"]}
    assert set(CHANNELS) <= schemes | {"mailtos"}, schemes
    assert "https" in schemes  # the full webhook forms of WeCom, Lark, Slack


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{number}" for number in
                                                range(len(BLOCKS))])
def test_each_example_loads_and_apprise_accepts_its_urls(block: str, tmp_path: Path) -> None:
    urls = notifier_urls(block, tmp_path)
    assert urls
    for url in urls:
        assert "${" not in url
        accepted: Any = apprise.Apprise.instantiate(url)
        if accepted is None:
            plugin = NotificationManager()[url.split("://", 1)[0]]
            assert not plugin.enabled, f"Apprise refused {url}"
            assert plugin.parse_url(url) is not None, f"{plugin.__name__} cannot read {url}"
