"""template.yaml, the real cloud: it lints, its handlers import, and nothing a handler writes can trigger it."""

from __future__ import annotations

import importlib
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bucketrun.events import keys

from conftest import ROOT

TEMPLATE = ROOT / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation's short tags (!Ref, !Sub, !GetAtt ...) as plain values."""


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}


_CfnLoader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def functions(template):
    return {name: r for name, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


def trigger_filters(template) -> list[tuple[str, str]]:
    """(prefix, suffix) of every S3 event source in the template."""
    out = []
    for fn in functions(template).values():
        for ev in (fn["Properties"].get("Events") or {}).values():
            if ev["Type"] != "S3":
                continue
            rules = {r["Name"]: r["Value"] for r in ev["Properties"]["Filter"]["S3Key"]["Rules"]}
            out.append((rules.get("prefix", ""), rules.get("suffix", "")))
    return out


def test_cfn_lint_passes():
    exe = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which("cfn-lint")
    assert exe, "cfn-lint is a dev dependency"
    result = subprocess.run([exe, str(TEMPLATE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_handler_resolves_to_an_importable_function(template):
    handlers = [fn["Properties"]["Handler"] for fn in functions(template).values()]
    assert len(handlers) == 2
    for handler in handlers:
        module, _, name = handler.rpartition(".")
        fn = getattr(importlib.import_module(module), name)
        assert callable(fn) and len(inspect.signature(fn).parameters) == 2, handler  # (event, context)


def test_the_bucket_is_versioned_private_and_the_api_key_is_a_secret_reference(template):
    props = template["Resources"]["JobsBucket"]["Properties"]
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    assert all(props["PublicAccessBlockConfiguration"].values())
    key_param = template["Parameters"]["RunpodApiKeySecretArn"]
    assert key_param["AllowedPattern"].startswith("^arn:aws") and "NoEcho" not in key_param
    assert "RUNPOD_API_KEY" not in template["Globals"]["Function"]["Environment"]["Variables"]


def test_iam_is_scoped_to_the_bucket_and_the_secrets(template):
    for name, fn in functions(template).items():
        for policy in fn["Properties"]["Policies"]:
            for st in policy["Statement"]:
                if "If" in st:  # a conditional statement: check the branch that grants something
                    st = st["If"][1]
                resource = st["Resource"]
                text = str(resource)
                assert text != "*" and "'*'" not in text, f"{name}: {st}"
                if any(a.startswith("s3:") for a in st["Action"]):
                    assert "${AWS::StackName}-jobs-${AWS::AccountId}" in text, f"{name}: {st}"


def test_poisoned_events_are_kept(template):
    for name, fn in functions(template).items():
        dest = fn["Properties"]["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]
        assert dest["Type"] == "SQS", name


def _sample_args(fn) -> list:
    samples = {"job_id": "20261122T184512123Z-k3f9qz", "seq": 7, "attempt": 2, "name": "transcript.json",
               "token": "request:abc", "at": None, "shard": "000000000-000000050", "digest": "ab" * 32,
               "worker": "w0001", "role": "progress", "instance": "local-123", "generation": 2,
               "output_prefix": "datasets/x/", "lo": 0, "hi": 50, "label": "gpu", "host": "mac4",
               "agent": "mac4-gpu-1", "step": 10, "chunk": 3, "writer": "w0001", "seq": 2,
               "options_digest": "0f" * 12, "media_sha256": "cd" * 32, "media_id": "Youtube:dQw4w9WgXcQ",
               "item": "media/talk.ogg", "sha256": "ef" * 32, "fmt": "srt"}
    return [samples[p] for p in inspect.signature(fn).parameters if p in samples]


# Keys only a user (or the CLI acting for one) writes: they are the triggers.
# A window's next stage (`then_inbox_key`) is one too, dropped on the user's behalf: once, create-once, with a
# request id derived from the window (events/stages.py), so it cannot loop.
USER_WRITTEN = {"inbox_key", "cancel_request_key", "then_inbox_key"}


def handler_written_keys() -> dict[str, str]:
    out = {}
    for name, fn in inspect.getmembers(keys, inspect.isfunction):
        params = inspect.signature(fn).parameters
        if (fn.__module__ != keys.__name__ or not name.endswith(("_key", "_prefix")) or name in USER_WRITTEN
                or "key" in params):  # a parser of keys, not a maker
            continue
        out[name] = fn(*_sample_args(fn))
    return out


def test_no_key_a_handler_writes_matches_a_trigger(template):
    filters = trigger_filters(template)
    assert ("inbox/", ".json") in filters and ("control/cancel/", ".json") in filters
    written = handler_written_keys()
    assert {"event_key", "manifest_key", "progress_key", "artifact_key", "notify_key", "notify_watch_key",
            "launch_claim_key", "idempotency_key", "log_key", "intake_key", "live_key", "fleet_plan_key",
            "fleet_lease_key", "fleet_done_key", "fleet_part_key", "fleet_dataset_key", "fleet_heartbeat_key",
            "fleet_index_key", "fleet_instance_key", "agent_offer_key", "agent_claim_key", "host_key",
            "preflight_key", "train_log_key", "mirror_manifest_key", "report_key",
            "fleet_item_artifact_key"} <= set(written)
    for name, key in written.items():
        for prefix, suffix in filters:
            assert not (key.startswith(prefix) and key.endswith(suffix)), f"{name} -> {key} would re-trigger"
    # The user-written keys do match, which is what makes them triggers.
    assert keys.inbox_key("a.json").startswith("inbox/") and keys.cancel_request_key("x").endswith(".json")


def test_the_cloud_side_never_writes_a_trigger_key():
    """The dispatch and sweep functions, and the GPU worker, never build an inbox or cancel key."""
    cloud_side = [*sorted((ROOT / "handlers").glob("*.py")), *sorted((ROOT / "handlers" / "launchers").glob("*.py")),
                  *sorted((ROOT / "images").rglob("*.py"))]
    # the command line (handlers/cli/) writes triggers on purpose: it is the user; so does a host agent on the
    # user's own machine when a window's manifest asks for its next stage (`then`, one create-once drop)
    operator_side = {"client.py", "agent_task.py"}
    for path in cloud_side:
        if path.name in operator_side:
            continue
        text = path.read_text()
        for name in USER_WRITTEN:
            assert f"{name}(" not in text, f"{path.relative_to(ROOT)} calls keys.{name}"


def test_every_runpod_kind_has_its_own_endpoint(template):
    """Routing sends kind K to RUNPOD_ENDPOINT_ID_<K>; a kind added without its endpoint fails here."""
    from bucketrun.events.kinds import get_kind, kind_names
    from bucketrun.handlers.launchers import endpoint_env

    env = template["Globals"]["Function"]["Environment"]["Variables"]
    runpod_kinds = [get_kind(k) for k in kind_names() if get_kind(k).launcher == "runpod"]
    assert runpod_kinds
    for spec in runpod_kinds:
        param = env.get(endpoint_env(spec.env_suffix))
        assert param and param["Ref"] in template["Parameters"], spec.name


def test_the_cloud_functions_log_json(template):
    logging_config = template["Globals"]["Function"]["LoggingConfig"]
    assert logging_config["LogFormat"] == "JSON" and logging_config["ApplicationLogLevel"] == "INFO"
