"""Host agents and training windows: `bucketrun agent`, `bucketrun fingerprint dataset|hf-cache PATH` and
`bucketrun report JOB`."""

from __future__ import annotations

import json
import sys

from bucketrun.events import codec, keys
from bucketrun.events.errors import NotFound
from bucketrun.images.runtime.agent import main

from .agents import print_unit
from .common import CliError, bucket_of


def cmd_agent(args) -> int:
    if args.print_unit:
        return print_unit(args)
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    try:
        return main(bucket_of(args).url, labels, args.root, args.id, args.poll, once=args.once,
                    poll_max_s=args.poll_max)
    except ValueError as exc:
        raise CliError(f"bucketrun agent: {exc}") from None


def cmd_fingerprint(args) -> int:
    """Print a fingerprint to paste into a manifest, made from a known-good copy."""
    # late: huggingface_hub (heavy, the agent extra) only for `bucketrun fingerprint`
    from bucketrun.images.train_window.fingerprint import FingerprintError, fingerprint_dataset, fingerprint_hf_cache

    try:
        if args.what == "dataset":
            mins = {}
            for spec in args.min_lines or []:
                split, _, n = spec.partition("=")
                if not n.isdigit():
                    raise CliError(f"--min-lines wants SPLIT=N, got {spec!r}")
                mins[split] = int(n)
            fp = fingerprint_dataset(args.path, mins or None)
        else:
            if not args.repo:
                raise CliError("fingerprint hf-cache needs --repo ORG/NAME")
            fp = fingerprint_hf_cache(args.path, args.repo, args.revision, args.repo_type)
    except FingerprintError as exc:
        raise CliError(f"bucketrun fingerprint: {exc}") from None
    print(json.dumps(fp.model_dump(mode="json"), indent=2 if args.pretty else None))
    return 0


def cmd_report(args) -> int:
    bucket = bucket_of(args)
    try:
        if args.json:
            print(json.dumps(codec.loads(bucket.get(keys.report_json_key(args.job)).data), sort_keys=True))
        else:
            sys.stdout.write(bucket.get(keys.report_key(args.job)).data.decode())
    except NotFound:
        raise CliError(f"bucketrun: job {args.job} has no report (only training windows write one, at the end "
                       "of each attempt)") from None
    return 0


def register(add) -> None:
    p = add("agent", cmd_agent, "run jobs offered to this machine's labels (a host agent)")
    p.add_argument("--labels", required=True, help="comma-separated, e.g. mac4,gpu")
    p.add_argument("--root", help="where the manifests' relative host paths live (default: the current folder)")
    p.add_argument("--id", help="this agent's id (default: host-label-pid)")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between looks while work is offered")
    p.add_argument("--poll-max", type=float, default=30.0, help="the longest wait between looks while idle")
    p.add_argument("--once", action="store_true", help="look once, wait for what was claimed, and exit")
    p.add_argument("--print-unit", choices=["systemd", "launchd"], help="print a service unit that keeps this "
                   "agent running (a systemd .service or a launchd plist) and exit")
    p = add("fingerprint", cmd_fingerprint, "fingerprint a known-good dataset or Hugging Face cache")
    p.add_argument("what", choices=["dataset", "hf-cache"])
    p.add_argument("path")
    p.add_argument("--repo", help="hf-cache: the repo id, e.g. openai/whisper-base")
    p.add_argument("--revision", help="hf-cache: a 40-hex commit (default: what refs/main points to)")
    p.add_argument("--repo-type", default="model", choices=["model", "dataset", "space"])
    p.add_argument("--min-lines", action="append", metavar="SPLIT=N", help="dataset: a minimum line count")
    p.add_argument("--pretty", action="store_true")
    p = add("report", cmd_report, "a training window's report (report.md; --json for scripts)")
    p.add_argument("job")
    p.add_argument("--json", action="store_true")
