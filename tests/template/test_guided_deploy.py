"""`sam deploy --guided` in a pseudo-terminal, Enter to every question: how many it asks.

The real SAM CLI with fake credentials; its one AWS call (the managed bucket lookup, after
the questions) goes to a closed local port and fails there (harness.guided_prompts).
"""

from __future__ import annotations

import pytest
from samtranslator.yaml_helper import yaml_parse

from harness.guided_prompts import CLOSED_PORT_URL, run_guided
from tests.template.cfn import ROOT, load

pytestmark = pytest.mark.slow

MOST_PARAMETER_PROMPTS = 12


def _stopped_before_aws(transcript: str) -> bool:
    return f'Could not connect to the endpoint URL: "{CLOSED_PORT_URL}/"' in transcript


def test_a_first_guided_deploy_asks_only_the_first_deploy_parameters() -> None:
    run = run_guided()  # the default environment: what its `sam build` builds, quickstart.yaml
    quick = yaml_parse((ROOT / "quickstart.yaml").read_text())["Parameters"]
    assert run.parameters == list(quick), run.transcript[-3000:]
    assert len(run.parameters) <= MOST_PARAMETER_PROMPTS
    assert "Stack Name [cachesync]" in run.transcript and "AWS Region [us-fake-1]" in run.transcript
    # every question was answered and SAM got as far as its first AWS call, which failed locally
    assert _stopped_before_aws(run.transcript), run.transcript[-3000:]
    assert run.exit_code != 0


def test_template_yaml_itself_still_takes_every_parameter() -> None:
    # what samconfig's dev and prod environments build: every setting stays settable there
    run = run_guided(config_env="dev")
    assert run.parameters == list(load()["Parameters"]), run.transcript[-3000:]
    assert len(run.parameters) > MOST_PARAMETER_PROMPTS
    # the environment's values are the prompts' defaults (SAM asks for them all the same)
    assert "Parameter LogLevel [DEBUG]" in run.transcript
    assert _stopped_before_aws(run.transcript)
