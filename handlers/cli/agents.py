"""`bucketrun agents`: every host agent as its heartbeat tells it; and `bucketrun agent --print-unit systemd|launchd`,
the service unit that keeps one running (restarted when it fails) with the settings it reads from the environment."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import sys
from pathlib import Path

from bucketrun.events.hosts import read_hosts
from bucketrun.events.storage import resolve_bucket_url

from .common import bucket_of

# What an agent reads from its environment: the S3 settings and credential chain, bucketrun's own settings, and
# what the training commands it starts are handed (images/train_window/supervise.py BASE_ENV). Secrets are never
# printed: the unit names them and says where they go.
AGENT_ENV = ("BUCKETRUN_S3_ADDRESSING_STYLE", "BUCKETRUN_INSTANCE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
             "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
             "PATH", "LANG", "TZ")
AGENT_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
STOP_S = 60  # the agent gives its children 30 s to drain their attempts as `lost` (agent.py CHILD_GRACE_S)


def cmd_agents(args) -> int:
    hosts = sorted(read_hosts(bucket_of(args)), key=lambda h: (h["status"] != "alive", h.get("agent", "")))
    if args.json:
        print(json.dumps(hosts, sort_keys=True))
        return 0
    if not hosts:
        print("no host agents have reported to this bucket; start one with `bucketrun agent --labels LABEL`")
        return 0
    rows = [("AGENT", "STATUS", "HEARTBEAT", "VERSION", "LABELS", "RUNNING", "CAN RUN")]
    for h in hosts:
        tasks = ", ".join(f"{t['job_id']} #{t['attempt']} {t['role']}" for t in h.get("tasks", [])) or "-"
        kinds = ", ".join(h["kinds"]) if "kinds" in h else "(not reported)"
        rows.append((h.get("agent", "?"), h["status"], _age(h["heartbeat_age_s"]), h.get("version", "?"),
                     ",".join(h.get("labels", [])), tasks, kinds))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    for h in hosts:
        for kind, why in sorted(h.get("cannot_run", {}).items()):
            print(f"  {h['agent']} cannot run {kind}: {why}")
    return 0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago" if seconds < 7200 else \
        f"{seconds / 3600:.0f}h ago"


def agent_argv(args) -> list[str]:
    """The command line that starts this same agent: absolute paths, the bucket resolved, defaults left out."""
    beside = Path(sys.executable).with_name("bucketrun")  # this interpreter's own, before any other on PATH
    exe = str(beside) if beside.exists() else shutil.which("bucketrun") or "bucketrun"
    url = resolve_bucket_url(args.bucket)
    if "://" not in url:  # a folder: absolute, as the service's working directory is not this shell's
        url = str(Path(url).expanduser().resolve())
    argv = [exe, "--bucket", url, "agent",
            "--labels", args.labels, "--root", str(Path(args.root or Path.cwd()).expanduser().resolve())]
    if args.id:
        argv += ["--id", args.id]
    if args.poll != 2.0:
        argv += ["--poll", str(args.poll)]
    if args.poll_max != 30.0:
        argv += ["--poll-max", str(args.poll_max)]
    return argv


def service_unit(kind: str, argv: list[str], root: str, env: dict[str, str]) -> str:
    """A systemd .service (Restart=on-failure) or a launchd plist (KeepAlive) running `argv` in `root`."""
    labels = argv[argv.index("--labels") + 1]
    values = {k: env[k] for k in AGENT_ENV if env.get(k)}
    secrets = ", ".join(AGENT_SECRETS)
    if kind == "systemd":
        lines = [f"# bucketrun host agent on {labels}. Save as ~/.config/systemd/user/bucketrun-agent.service, then",
                 "# `systemctl --user daemon-reload && systemctl --user enable --now bucketrun-agent`",
                 "# (`loginctl enable-linger` keeps it running when you log out).",
                 "[Unit]", f"Description=bucketrun host agent ({labels})",
                 "After=network-online.target", "Wants=network-online.target", "",
                 "[Service]", "Type=simple", f"WorkingDirectory={root}",
                 "ExecStart=" + " ".join(_systemd_quote(a) for a in argv)]
        lines += [f"Environment={_quoted(f'{k}={v}'.replace('%', '%%'))}" for k, v in values.items()]
        lines += [f"# The bucket's credentials ({secrets}): NAME=value lines in this file, mode 600.",
                  "EnvironmentFile=-%h/.config/bucketrun/agent.env",
                  "Restart=on-failure", "RestartSec=10", "KillSignal=SIGTERM", f"TimeoutStopSec={STOP_S}", "",
                  "[Install]", "WantedBy=default.target", ""]
        return "\n".join(lines)
    plist = {"Label": "org.bucketrun.agent", "ProgramArguments": argv, "WorkingDirectory": root,
             "EnvironmentVariables": values, "RunAtLoad": True,
             "KeepAlive": {"SuccessfulExit": False}, "ThrottleInterval": 10, "ExitTimeOut": STOP_S,
             "StandardErrorPath": str(Path(root) / "bucketrun-agent.log")}
    head = (f"<!-- bucketrun host agent on {labels}. Add the bucket's credentials ({secrets}) to "
            "EnvironmentVariables, save as ~/Library/LaunchAgents/org.bucketrun.agent.plist (mode 600), then "
            "`launchctl load -w` it. -->\n")
    text = plistlib.dumps(plist, sort_keys=False).decode()
    first, rest = text.split("\n", 1)
    return first + "\n" + head + rest


def _systemd_quote(word: str) -> str:
    """ExecStart= is split into words like a shell's, but expands `%` specifiers and `$` variables: both escaped."""
    return _quoted(word.replace("%", "%%").replace("$", "$$"))


def _quoted(word: str) -> str:
    """Double quotes (systemd takes no shell-style concatenation), with backslash and quote escaped inside."""
    if word and not any(c in word for c in " \t\"'\\;"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def print_unit(args) -> int:
    argv = agent_argv(args)
    print(service_unit(args.print_unit, argv, argv[argv.index("--root") + 1], dict(os.environ)), end="")
    return 0


def register(add) -> None:
    p = add("agents", cmd_agents, "every host agent: labels, version, heartbeat, what it runs and can run")
    p.add_argument("--json", action="store_true", help="one JSON array, for scripts")
