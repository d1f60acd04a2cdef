"""Counts the questions `sam deploy --guided` asks, answering each with Enter, without AWS.

    python -m harness.guided_prompts [--template-file template.yaml] [--config-env dev]

Runs the real SAM CLI in a pseudo-terminal (it prompts only on a terminal) from the
repository, with a copy of samconfig.toml (guided deploy offers to write it back) and a
fresh HOME, fake credentials and a region that does not exist. Every prompt gets Enter. SAM
asks for the stack name, the region and each template parameter, then its own yes/no
questions, and then looks for its managed bucket: the only AWS call, sent to a closed port
on 127.0.0.1, so it fails at once and nothing leaves the machine (telemetry off as well).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from devkit.sam import ROOT

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_PARAMETER = re.compile(r"^\s*Parameter (\w+)(?: \[(.*)\])?:", re.MULTILINE)
# a prompt is a line that ends in ":" (click's "Text [default]: "), waiting for an answer
_WAITING = re.compile(r"[:?\]]\s*$")
CLOSED_PORT_URL = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused


@dataclass(frozen=True)
class GuidedRun:
    transcript: str
    parameters: list[str]  # the template parameters asked for, in order
    prompts: int  # every question answered, SAM's own included
    exit_code: int


def fake_aws_environment(home: Path) -> dict[str, str]:
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-fake-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_ENDPOINT_URL": CLOSED_PORT_URL,  # every AWS API, should SAM get as far as calling one
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
        "SAM_CLI_TELEMETRY": "0",
    }


def run_guided(
    template_file: str | None = None, config_env: str | None = None, deadline_seconds: float = 300.0
) -> GuidedRun:
    """`sam deploy --guided` as a first deployment on a fresh clone runs it after `sam build`,
    Enter to everything. Without `template_file`, the template the environment's `sam build`
    builds (a built template asks for the same parameters as its source)."""
    import pty

    template_file = template_file or built_template(config_env or "default")

    with tempfile.TemporaryDirectory() as directory:
        home = Path(directory)
        config = home / "samconfig.toml"
        shutil.copy(ROOT / "samconfig.toml", config)
        command = [str(Path(sys.executable).parent / "sam"), "deploy", "--guided", "--config-file", str(config)]
        command += ["--template-file", template_file]
        if config_env:
            command += ["--config-env", config_env]
        primary, secondary = pty.openpty()
        process = subprocess.Popen(
            [*_die_with_parent(), *command],
            cwd=ROOT,
            env=fake_aws_environment(home),
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            start_new_session=True,
        )
        os.close(secondary)
        output, prompts = [], 0
        waiting = ""
        deadline = time.monotonic() + deadline_seconds
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([primary], [], [], 0.2)
                if ready:
                    try:
                        data = os.read(primary, 65536).decode(errors="replace")
                    except OSError:  # the terminal closed: SAM has exited
                        break
                    if not data:
                        break
                    output.append(data)
                    waiting = (waiting + data)[-400:]
                    continue
                # quiet for a moment after a line that asks for input: answer it
                if _WAITING.search(_ANSI.sub("", waiting)):
                    os.write(primary, b"\r")
                    prompts += 1
                    waiting = ""
                elif process.poll() is not None:
                    break
            else:
                raise TimeoutError(f"sam deploy --guided still running after {deadline_seconds:.0f} s")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            exit_code = process.wait()
            os.close(primary)
    transcript = _ANSI.sub("", "".join(output)).replace("\r\n", "\n")
    return GuidedRun(transcript, [m.group(1) for m in _PARAMETER.finditer(transcript)], prompts, exit_code)


def built_template(config_env: str) -> str:
    """The template_file samconfig.toml gives `sam build` in that environment (template.yaml if none)."""
    import tomllib

    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    build = config.get(config_env, {}).get("build", {}).get("parameters", {})
    return str(build.get("template_file", "template.yaml"))


def _die_with_parent() -> list[str]:
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--template-file", help="as for sam deploy (default: what samconfig's environment builds)")
    parser.add_argument("--config-env", help="samconfig environment (default: default)")
    parser.add_argument("--transcript", action="store_true", help="print what SAM printed")
    args = parser.parse_args(argv)
    run = run_guided(args.template_file, args.config_env)
    if args.transcript:
        print(run.transcript)
    summary = {"parameter_prompts": len(run.parameters), "all_prompts": run.prompts, "parameters": run.parameters}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
