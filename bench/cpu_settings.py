"""Benchmark: word error rate and real-time factor of faster-whisper CPU settings on the offline base model (int8),
to pick the default as "the fastest setting whose WER is within 0.01 of beam 5" (target RTF <= 0.08).

Speech is espeak-ng reading bench/speech/clips.json (several voices and speeds, ~5 min). Every setting uses what
the product uses: language "en", VAD on, word timestamps on, no conditioning on previous text. Audio is decoded
before the clock starts, as the worker does (images/transcribe/work.py); the clock covers transcribe() and reading
every segment. Runs are interleaved (round r of every setting, then round r+1) so load from other processes is
shared out evenly; CPU seconds are recorded beside wall time for the same reason. `--joined` adds a pass over all
clips joined into one file: a ~25 s clip is one or two 30 s chunks, too few for the batched pipeline to batch.

    .venv/bin/python bench/cpu_settings.py --quick     # 3 clips, 1 run, a few settings: does it work
    .venv/bin/python bench/cpu_settings.py --joined    # the measurement
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speech_clips import synthesize_all  # noqa: E402

TOLERANCE = 0.01  # WER may rise this much above beam 5 (2 threads) for a setting to be chosen
TARGET_RTF = 0.08
SAMPLE_RATE = 16000
OPTIONS = {"language": "en", "vad_filter": True, "word_timestamps": True, "condition_on_previous_text": False}
ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spoken(n: int) -> str:
    """An integer as the words espeak-ng reads from the reference ("2,000" -> "two thousand")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    for size, name in ((10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = n % size
            return f"{spoken(n // size)} {name}" + (f" {spoken(rest)}" if rest else "")
    raise AssertionError(n)


def fold_numbers(text: str) -> str:
    """Whisper writes "ten minutes" as "10 minutes": the same words, so digits become words before scoring."""
    return re.sub(r"\d[\d,]*", lambda m: f" {spoken(int(m.group().replace(',', '')))} ", text)


def load_model(path: str, threads: int):
    from faster_whisper import WhisperModel

    return WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1,
                        local_files_only=True)


def transcriber(model, setting: dict):
    """A function audio -> text for one setting; the batched pipeline wraps the same loaded model."""
    from faster_whisper import BatchedInferencePipeline

    if setting["batch"]:
        run, extra = BatchedInferencePipeline(model).transcribe, {"batch_size": setting["batch"]}
    else:
        run, extra = model.transcribe, {}
    return lambda audio: " ".join(s.text.strip() for s in run(audio, beam_size=setting["beam"], **OPTIONS, **extra)[0])


def label(s: dict) -> str:
    kind = f"batched bs{s['batch']:<2d} beam {s['beam']}" if s["batch"] else f"sequential beam {s['beam']}"
    return f"{kind}, {s['threads']} thr"


def time_round(models: dict, res: dict, inputs: list[dict]) -> None:
    """One pass of one setting over every input: wall and CPU seconds per audio second; texts on the first."""
    go = transcriber(models[res["threads"]], res)
    wall = cpu = 0.0
    texts = []
    for item in inputs:
        t0, c0 = time.perf_counter(), time.process_time()
        texts.append(go(item["audio"]))
        wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
    audio = sum(i["duration"] for i in inputs)
    res["rtfs"].append(wall / audio)
    res["cpu_per_audio_s"].append(cpu / audio)
    if "hypotheses" not in res:
        score(res, inputs, texts)


def score(res: dict, inputs: list[dict], texts: list[str]) -> None:
    """Corpus WER over normalised texts (the brief's figure) and the same with numbers folded to words."""
    import jiwer

    from bucketrun.images.fleet.processors.transcript_check import normalise

    for key, prep in (("wer_plain", normalise), ("wer", lambda t: normalise(fold_numbers(t)))):
        refs, hyps = [prep(i["text"]) for i in inputs], [prep(t) for t in texts]
        res[key] = float(jiwer.wer(refs, hyps))
        res[f"per_input_{key}"] = {i["name"]: round(float(jiwer.wer(r, h)), 4) for i, r, h in zip(inputs, refs, hyps)}
    res["hypotheses"] = texts


def candidates(threads: int, quick: bool, joined: bool) -> list[dict]:
    if joined:  # the long-input pass: does batching pay once there is something to batch?
        grid = [(0, 1), (0, 5)] + [(bs, 1) for bs in ((4, 16) if quick else (2, 4, 8, 16))] + [(8, 5)]
        return [{"threads": 2, "beam": b, "batch": bs} for bs, b in grid] if threads == 2 else []
    out = [{"threads": threads, "beam": b, "batch": 0} for b in ([1, 5] if quick else [1, 2, 3, 5])]
    if threads == 2:
        grid = [(4, 1)] if quick else [(bs, b) for b in (1, 5) for bs in (2, 4, 8, 16)]
        out += [{"threads": 2, "beam": b, "batch": bs} for bs, b in grid]
    return out


def choose(results: list[dict], base_wer: float) -> dict:
    """The fastest (median RTF) setting within TOLERANCE of the baseline's WER, or the fastest if none is."""
    ok = [r for r in results if r["wer"] <= base_wer + TOLERANCE + 1e-9] or results
    return min(ok, key=lambda r: statistics.median(r["rtfs"]))


def run_pass(models: dict, inputs: list[dict], runs: int, quick: bool, title: str) -> dict:
    """Round 0 of the 2-thread settings picks the batched setting that is also tried on 1 thread; then the rest
    of round 0 and the later rounds run every setting in turn (reversed every other round, to even out drift)."""
    joined = title == "joined"
    new = lambda s: {**s, "label": label(s), "rtfs": [], "cpu_per_audio_s": []}  # noqa: E731
    results = [new(s) for s in candidates(2, quick, joined)]

    def one(res: dict, r: int) -> None:
        time_round(models, res, inputs)
        print(f"  [{time.strftime('%H:%M:%S')}] {title} run {r + 1}: {res['label']}: WER {res['wer']:.4f}, "
              f"RTF {res['rtfs'][-1]:.4f}, load {os.getloadavg()[0]:.2f}", flush=True)

    for res in results:
        one(res, 0)
    if not joined:
        base2 = next(r for r in results if r["beam"] == 5 and not r["batch"])
        best = choose([r for r in results if r["batch"]], base2["wer"])
        later = [new(s) for s in candidates(1, quick, joined)] + [new({"threads": 1, "beam": best["beam"], "batch": best["batch"]})]
        for res in later:
            one(res, 0)
        results += later
    for r in range(1, runs):
        for res in (results if r % 2 else results[::-1]):
            one(res, r)
    base = {t: next((r for r in results if r["threads"] == t and r["beam"] == 5 and not r["batch"]), None)
            for t in (2, 1)}
    for r in results:
        r["rtf_median"], r["rtf_min"] = statistics.median(r["rtfs"]), min(r["rtfs"])
        r["cpu_median"] = statistics.median(r["cpu_per_audio_s"])
        r["delta_wer"] = r["wer"] - base[r["threads"]]["wer"]
        r["rtf_vs_baseline"] = r["rtf_median"] / statistics.median(base[2]["rtfs"])
        r["load_after"] = os.getloadavg()
    chosen = choose(results, base[2]["wer"])
    return {"title": title, "audio_seconds": sum(i["duration"] for i in inputs), "inputs": len(inputs),
            "baseline": base[2]["label"], "baseline_wer": base[2]["wer"], "baseline_rtf": base[2]["rtf_median"],
            "chosen": chosen["label"], "chosen_wer": chosen["wer"], "chosen_rtf": chosen["rtf_median"],
            "target_rtf": TARGET_RTF, "target_met": chosen["rtf_median"] <= TARGET_RTF, "results": results}


def print_table(p: dict) -> None:
    print(f"\n{p['title']}: {p['inputs']} input(s), {p['audio_seconds']:.1f} s of audio. WER: numbers folded to "
          "words; WERplain: normalise() only. dWER vs sequential beam 5 on the same threads")
    print(f"{'setting':<28} {'WER':>6} {'dWER':>7} {'WERplain':>8} {'RTF med':>7} {'RTF min':>7} {'CPU s/s':>7} "
          f"{'x base':>6}  ok")
    for r in sorted(p["results"], key=lambda r: r["rtf_median"]):
        ok = "yes" if r["wer"] <= p["baseline_wer"] + TOLERANCE + 1e-9 else "no"
        print(f"{r['label']:<28} {r['wer']:6.4f} {r['delta_wer']:+7.4f} {r['wer_plain']:8.4f} {r['rtf_median']:7.4f} "
              f"{r['rtf_min']:7.4f} {r['cpu_median']:7.4f} {r['rtf_vs_baseline']:6.2f}  {ok}")
    print(f"chosen: {p['chosen']} (WER {p['chosen_wer']:.4f} vs baseline {p['baseline_wer']:.4f}; RTF "
          f"{p['chosen_rtf']:.4f} vs {p['baseline_rtf']:.4f}); RTF <= {TARGET_RTF}: {'met' if p['target_met'] else 'NOT met'}")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 clips, 1 run, fewer settings")
    parser.add_argument("--joined", action="store_true", help="also a pass over the clips joined into one file")
    parser.add_argument("--out", type=Path, help="default bench/results/cpu_settings.json; --quick: a temp file")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    args.out = args.out or (Path(tempfile.gettempdir()) / "cpu_settings.quick.json" if args.quick
                            else ROOT / "bench" / "results" / "cpu_settings.json")

    from faster_whisper import decode_audio

    from bucketrun.images.transcribe import model as models

    started, load_start, uptime_start = time.time(), os.getloadavg(), uptime()
    print(f"at start: {uptime_start}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-settings-") as tmp:
        audio = synthesize_all(Path(tmp), 3 if args.quick else None)
        inputs = [{"name": a.clip.name, "text": a.clip.text, "duration": a.duration,
                   "audio": decode_audio(str(a.path), sampling_rate=SAMPLE_RATE)} for a in audio]
    path = str(models.offline_base_path())
    loaded = {t: load_model(path, t) for t in (2, 1)}
    for m in loaded.values():  # untimed warm-up: first-call allocations and caches
        list(m.transcribe(inputs[0]["audio"], beam_size=5, **OPTIONS)[0])
    print(f"{len(inputs)} clips, {sum(i['duration'] for i in inputs):.1f} s; {runs} run(s) per setting; base int8 "
          "CPU", flush=True)
    passes = [run_pass(loaded, inputs, runs, args.quick, "clips")]
    if args.joined:
        gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
        joined = np.concatenate([x for i in inputs for x in (i["audio"], gap)])
        one = [{"name": "joined", "text": " ".join(i["text"] for i in inputs), "duration": len(joined) / SAMPLE_RATE,
                "audio": joined}]
        passes.append(run_pass(loaded, one, runs, args.quick, "joined"))
    load_end, uptime_end, elapsed = os.getloadavg(), uptime(), time.time() - started
    for p in passes:
        print_table(p)
    print(f"\nload average at start {' '.join(f'{x:.2f}' for x in load_start)}, at end "
          f"{' '.join(f'{x:.2f}' for x in load_end)}; run time {elapsed / 60:.1f} min")
    report = {"benchmark": "cpu_settings", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": " ".join(sys.argv), "runs": runs, "model": "offline base, int8, CPU", "options": OPTIONS,
              "tolerance": TOLERANCE, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                  "platform": platform.platform()},
              "load_start": load_start, "load_end": load_end, "uptime_start": uptime_start, "uptime_end": uptime_end,
              "seconds": round(elapsed, 1), "clips": [{k: i[k] for k in ("name", "duration")} for i in inputs],
              "passes": passes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
