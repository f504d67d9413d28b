"""The kubectl plugin as users run it: the installed ``kubectl-lparkube`` executable, and the real
``kubectl`` finding it on PATH (``kubectl lparkube ...``), against the real API server with the
project's CRDs.

No operator runs here: the module has a control plane of its own (the session's runs the
operator, which would write the statuses these tests write). Where a test checks the plugin's
*waiting* (progress lines as status changes, the exit code a final condition gives), the test
itself plays the controller: it patches the object's status subresource the way the operator's
docs say it will be written (docs/api.md, docs/saving.md). The plugin with the real operator:
test_kubectl_plugin_with_operator.py.
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl_plugin_helpers import EXECUTABLE, plugin_env, run_plugin
from kubernetes import client, config

from lparkube.adapters.kube import MERGE_PATCH
from lparkube.api.resource import GROUP, VERSION
from lparkube.api.v1alpha1 import remoterestart as rr
from lparkube.api.v1alpha1.hibernationimage import HIBERNATION_IMAGE
from lparkube.api.v1alpha1.partition import PARTITION
from lparkube.api.v1alpha1.remoterestart import REMOTE_RESTART
from lparkube.api.v1alpha1.saveevent import SAVE_EVENT
from lparkube.domain.clock import rfc3339
from lparkube_devenv.controlplane import (
    REPO_ROOT,
    LocalControlPlane,
    find_tool,
    free_port,
    install_crds,
)

VERBS = ("save", "hibernate", "resume", "restart", "status")
NOW = "2026-12-01T12:00:00Z"
LINE_TIMEOUT = 20.0


# --- running the plugin -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalControlPlane]:
    """This module's control plane, with lparkube's CRDs and no operator."""
    with LocalControlPlane(tmp_path_factory.mktemp("plugin-plane")) as plane:
        with config.new_client_from_config(config_file=str(plane.kubeconfig)) as api:
            install_crds(api, REPO_ROOT / "crds")
        yield plane


@pytest.fixture(scope="module")
def kubeconfig(control_plane: LocalControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="module")
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    with config.new_client_from_config(config_file=str(kubeconfig)) as api:
        yield api


@pytest.fixture(scope="module")
def kubectl_exe(control_plane: LocalControlPlane) -> str:
    return find_tool("kubectl", control_plane.bin_dir)


class Run:
    """One plugin process in the background; its stdout read line by line as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next_line(self, timeout: float = LINE_TIMEOUT) -> str:
        """The next line of stdout; fails when none comes in time or the process ended."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no new output within {timeout}s; so far: {self.lines}") from None
        assert line is not None, f"the plugin exited {self.finish()}; it printed {self.lines}"
        self.lines.append(line)
        return line

    def running(self) -> bool:
        return self.process.poll() is None

    def finish(self, timeout: float = LINE_TIMEOUT) -> tuple[int, str, str]:
        """(exit code, the rest of stdout, stderr) once it exits."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"still running after {timeout}s: {self.lines}") from None
        self._reader.join(timeout=5)
        rest = []
        while (line := self._queue.get_nowait() if not self._queue.empty() else None) is not None:
            rest.append(line)
        assert self.process.stderr is not None
        return code, "\n".join(rest), self.process.stderr.read()


@pytest.fixture
def context_kubeconfig(kubeconfig: Path, namespace: str, tmp_path: Path) -> Path:
    """The admin kubeconfig with the test's namespace as its context's namespace: the plugin
    takes it from there when no -n is given, as kubectl does."""
    data = yaml.safe_load(kubeconfig.read_text())
    for context in data["contexts"]:
        context["context"]["namespace"] = namespace
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def plugin(kubeconfig: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``plugin(*args)``: the installed executable with --kubeconfig, run to its end."""
    return lambda *args, timeout=60: run_plugin(kubeconfig, *args, timeout=timeout)


@pytest.fixture
def kubectl_lparkube(kubectl_exe: str, context_kubeconfig: Path) -> Callable[..., Run]:
    """``kubectl_lparkube(*args)``: ``kubectl lparkube ARGS`` in the background, with KUBECONFIG
    naming the test's namespace in its context (so no -n)."""

    def start(*args: str) -> Run:
        return Run([kubectl_exe, "lparkube", *args], plugin_env(context_kubeconfig))

    return start


# --- playing the API's clients -------------------------------------------------------------------


class Objects:
    """lparkube objects in one namespace, read and written with the admin's client."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace

    def create(self, kind, body: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind.kind, **body}
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, kind.plural, body
        )

    def get(self, kind, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, kind.plural, name
        )

    def list(self, kind) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, kind.plural
        )["items"]

    def patch_status(self, kind, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """What the controller would write (merge patch of the status subresource)."""
        return self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, kind.plural, name, {"status": status},
            _content_type=MERGE_PATCH,
        )  # fmt: skip

    def partition(self, name: str, **spec: Any) -> dict[str, Any]:
        vm = {"runStrategy": "Always", "template": {"spec": {"domain": {"devices": {}}}}}
        return self.create(
            PARTITION, {"metadata": {"name": name}, "spec": {"vmTemplate": {"spec": vm}, **spec}}
        )


@pytest.fixture
def objects(api_client: client.ApiClient, namespace: str) -> Objects:
    return Objects(api_client, namespace)


def condition(type_: str, status: str, reason: str, message: str = "", generation: int = 1):
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": NOW}  # fmt: skip


def created_name(line: str, kind) -> str:
    prefix = f"{kind.singular}.{GROUP}/"
    assert line.startswith(prefix) and line.endswith(" created"), line
    return line.removeprefix(prefix).removesuffix(" created")


# --- kubectl finds it ---------------------------------------------------------------------------


def test_kubectl_finds_the_installed_plugin_and_shows_every_verbs_help(
    kubectl_exe: str, kubeconfig: Path
) -> None:
    env = plugin_env(kubeconfig)
    listed = subprocess.run(
        [kubectl_exe, "plugin", "list"], capture_output=True, text=True, env=env, check=False
    )
    assert str(EXECUTABLE) in listed.stdout, listed.stdout + listed.stderr
    top = subprocess.run(
        [kubectl_exe, "lparkube", "--help"], capture_output=True, text=True, env=env, check=False
    )
    assert top.returncode == 0, top.stderr
    for verb in VERBS:
        assert f"    {verb} " in top.stdout or f"    {verb}\n" in top.stdout
        shown = subprocess.run(
            [kubectl_exe, "lparkube", verb, "--help"],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"usage: kubectl lparkube {verb}")
        assert "--namespace" in shown.stdout and "--kubeconfig" in shown.stdout
    wrong = subprocess.run(
        [kubectl_exe, "lparkube", "save"], capture_output=True, text=True, env=env, check=False
    )
    assert wrong.returncode == 2
    assert "name at least one PARTITION" in wrong.stderr


# --- save ---------------------------------------------------------------------------------------


def test_save_no_wait_creates_the_save_event_and_returns_at_once(
    plugin, objects: Objects, namespace: str
) -> None:
    objects.partition("web-1")
    objects.partition("web-2")
    began = time.monotonic()
    done = plugin("save", "web-1", "web-2", "-n", namespace, "--reason", "Power", "--message",
                  "UPS on battery", "--deadline", "2m", "--no-wait")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - began < 15  # no operator runs: a wait would never end
    name = created_name(done.stdout.strip(), SAVE_EVENT)
    assert name.startswith("save-web-1-")
    spec = objects.get(SAVE_EVENT, name)["spec"]
    assert spec["targets"] == {"partitions": ["web-1", "web-2"]}
    assert (spec["reason"], spec["message"], spec["deadline"]) == ("Power", "UPS on battery", "2m")
    assert spec["applicationTimeout"] == "30s"  # the API's default, untouched

    every = plugin("save", "--all-in-namespace", "--name", "all-now", "-n", namespace, "--no-wait")
    assert every.returncode == 0, every.stderr
    assert objects.get(SAVE_EVENT, "all-now")["spec"]["targets"] == {"all": True}


def test_save_waits_printing_progress_as_status_changes_until_it_succeeds(
    kubectl_lparkube, objects: Objects
) -> None:
    """Plays the SaveEvent controller: the test writes the status the operator would."""
    objects.partition("web-1")
    objects.partition("web-2")
    run = kubectl_lparkube("save", "web-1", "web-2", "--timeout", "60s")
    name = created_name(run.next_line(), SAVE_EVENT)
    assert run.next_line() == "waiting for the operator to start the save"
    assert run.running()

    saving = "2 of 2 partitions still saving"
    running = [condition("Complete", "False", "InProgress", saving),
               condition("Succeeded", "Unknown", "InProgress", saving)]  # fmt: skip
    summary = {"partitions": 2, "pending": 2, "succeeded": 0, "failed": 0}
    objects.patch_status(SAVE_EVENT, name, {"conditions": running, "summary": summary})
    assert run.next_line() == "saved 0/2"
    objects.patch_status(SAVE_EVENT, name, {"summary": {**summary, "pending": 1, "succeeded": 1}})
    assert run.next_line() == "saved 1/2"
    assert run.running()

    message = "2 of 2 partitions saved, 0 failed; 3 of 3 applications saved"
    final = [condition("Complete", "True", "Succeeded", message),
             condition("Succeeded", "True", "Succeeded", message)]  # fmt: skip
    objects.patch_status(
        SAVE_EVENT, name,
        {"conditions": final, "summary": {**summary, "pending": 0, "succeeded": 2}},
    )  # fmt: skip
    assert run.next_line() == f"saved 2/2: Succeeded: {message}"
    code, rest, err = run.finish()
    assert (code, rest, err) == (0, "", "")


def test_save_exits_1_with_the_reason_and_the_partitions_that_did_not_save(
    kubectl_lparkube, objects: Objects, namespace: str
) -> None:
    """Plays the SaveEvent controller: the test writes the status the operator would."""
    objects.partition("web-1")
    objects.partition("web-2")
    run = kubectl_lparkube("save", "web-1", "web-2")
    name = created_name(run.next_line(), SAVE_EVENT)
    run.next_line()
    message = "1 of 2 partitions saved, 1 failed; 1 of 1 applications saved"
    objects.patch_status(SAVE_EVENT, name, {
        "conditions": [condition("Complete", "True", "PartiallySucceeded", message),
                       condition("Succeeded", "False", "PartiallySucceeded", message)],
        "summary": {"partitions": 2, "pending": 0, "succeeded": 1, "failed": 1},
        "partitions": [
            {"namespace": namespace, "name": "web-1", "outcome": "Succeeded"},
            {"namespace": namespace, "name": "web-2", "outcome": "Unreachable",
             "message": "the guest agent is not connected (AgentConnected is not True)"},
        ],
    })  # fmt: skip
    assert run.next_line() == f"saved 1/2 (1 failed): PartiallySucceeded: {message}"
    code, _, err = run.finish()
    assert code == 1
    assert err.splitlines() == [
        f"error: saved 1/2 (1 failed): PartiallySucceeded: {message}",
        f"  partition {namespace}/web-2: Unreachable: the guest agent is not connected "
        "(AgentConnected is not True)",
    ]


def test_save_of_a_missing_partition_creates_nothing_and_exits_1(
    plugin, objects: Objects, namespace: str
) -> None:
    objects.partition("web-1")
    done = plugin("save", "web-1", "ghost", "phantom", "-n", namespace)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f'error: partitions.lparkube.io "ghost" not found in namespace "{namespace}"; '
        f'partitions.lparkube.io "phantom" not found in namespace "{namespace}"'
    )
    assert objects.list(SAVE_EVENT) == []


def test_save_that_never_completes_times_out_with_exit_1(
    plugin, objects: Objects, namespace: str
) -> None:
    objects.partition("web-1")
    began = time.monotonic()
    done = plugin("save", "web-1", "-n", namespace, "--timeout", "2s")
    took = time.monotonic() - began
    assert done.returncode == 1
    assert 2 <= took < 20
    name = created_name(done.stdout.splitlines()[0], SAVE_EVENT)
    assert done.stderr.strip() == (
        f"error: timed out after 2s waiting for saveevent.lparkube.io/{name} (waiting for the "
        f"operator to start the save); it goes on: kubectl get saveevents {name} -n {namespace}"
    )


def test_an_invalid_request_is_the_api_servers_message_with_exit_1(
    plugin, objects: Objects, namespace: str
) -> None:
    objects.partition("web-1")
    done = plugin("save", "web-1", "-n", namespace, "--message", "x" * 2000, "--no-wait")
    assert done.returncode == 1
    assert done.stderr.startswith("error: SaveEvent.lparkube.io ")
    assert "spec.message: Too long" in done.stderr
    assert objects.list(SAVE_EVENT) == []


# --- hibernate ----------------------------------------------------------------------------------


def test_hibernate_waits_for_captured_showing_the_steps_and_bytes_written(
    kubectl_lparkube, objects: Objects
) -> None:
    """Plays the hibernation controller: the test writes the status the operator would."""
    objects.partition("web-1", viosClusterName="thin", paging={})
    run = kubectl_lparkube("hibernate", "web-1", "--name", "web-1-img", "--deadline", "5m")
    assert created_name(run.next_line(), HIBERNATION_IMAGE) == "web-1-img"
    image = objects.get(HIBERNATION_IMAGE, "web-1-img")
    assert image["spec"] == {
        "partitionName": "web-1",
        "saveFirst": True,
        "deadline": "5m",
        "retainAfterResume": False,
        "resume": False,
    }
    assert run.next_line() == "waiting for the operator to start the capture"

    capturing = [condition("Captured", "Unknown", "Saving", "saving the applications first")]
    steps = {"step": "Saving", "completedSteps": 0, "totalSteps": 6, "bytesWritten": 0}
    objects.patch_status(HIBERNATION_IMAGE, "web-1-img",
                         {"conditions": capturing, "progress": steps})  # fmt: skip
    assert run.next_line() == "Saving (0/6), 0 B written"
    steps = {"step": "Suspending", "completedSteps": 3, "totalSteps": 6, "bytesWritten": 100 << 20}
    objects.patch_status(HIBERNATION_IMAGE, "web-1-img", {"progress": steps})
    assert run.next_line() == "Suspending (3/6), 100.0 MiB written"
    assert run.running()

    objects.patch_status(HIBERNATION_IMAGE, "web-1-img", {
        "conditions": [condition("Captured", "True", "Captured", "the image is on the LU")],
        "progress": {"step": "Done", "completedSteps": 6, "totalSteps": 6,
                     "bytesWritten": 300 << 20},
        "lu": {"claimName": "lu-web-1", "usedBytes": 310 << 20},
        "memoryBytes": 512 << 20, "sourceNodeName": "node-a", "bootId": "b0",
    })  # fmt: skip
    assert run.next_line() == (
        "captured: 310.0 MiB on LU lu-web-1 (memory 512.0 MiB, node node-a, boot b0)"
    )
    assert run.finish() == (0, "", "")


def test_hibernate_exits_1_with_a_final_captured_false(kubectl_lparkube, objects: Objects) -> None:
    """Plays the hibernation controller: the test writes the status the operator would."""
    objects.partition("web-1")
    run = kubectl_lparkube("hibernate", "web-1", "--no-save-first")
    name = created_name(run.next_line(), HIBERNATION_IMAGE)
    assert name.startswith("web-1-")
    assert objects.get(HIBERNATION_IMAGE, name)["spec"]["saveFirst"] is False
    run.next_line()
    refusal = "the partition has no paging LU (spec.paging): it cannot hibernate"
    refused = [condition("Captured", "False", "NoPagingLU", refusal)]
    objects.patch_status(HIBERNATION_IMAGE, name, {"conditions": refused})
    assert run.next_line() == f"not captured: NoPagingLU: {refusal}"
    code, _, err = run.finish()
    assert (code, err) == (1, f"error: not captured: NoPagingLU: {refusal}\n")


def test_hibernate_no_wait_and_a_missing_partition(
    plugin, objects: Objects, namespace: str
) -> None:
    objects.partition("web-1")
    began = time.monotonic()
    done = plugin("hibernate", "web-1", "-n", namespace, "--no-wait")
    assert done.returncode == 0 and time.monotonic() - began < 15, done.stderr
    assert created_name(done.stdout.strip(), HIBERNATION_IMAGE).startswith("web-1-")

    missing = plugin("hibernate", "ghost", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f'error: partitions.lparkube.io "ghost" not found in namespace "{namespace}"'
    )
    assert len(objects.list(HIBERNATION_IMAGE)) == 1


def test_an_image_deleted_while_waiting_ends_the_wait_with_exit_1(
    kubectl_lparkube, objects: Objects
) -> None:
    objects.partition("web-1")
    run = kubectl_lparkube("hibernate", "web-1", "--name", "short-lived")
    run.next_line()
    run.next_line()
    objects.custom.delete_namespaced_custom_object(
        GROUP, VERSION, objects.namespace, HIBERNATION_IMAGE.plural, "short-lived"
    )
    code, rest, err = run.finish()
    assert (code, rest) == (1, "")
    assert err == f"error: hibernationimage.{GROUP}/short-lived was deleted while waiting\n"


# --- resume -------------------------------------------------------------------------------------


def captured_image(objects: Objects, name: str) -> None:
    """An image as the controller leaves it once Captured (and a Resumed=False of its own)."""
    objects.create(HIBERNATION_IMAGE, {"metadata": {"name": name},
                                       "spec": {"partitionName": "web-1"}})  # fmt: skip
    objects.patch_status(HIBERNATION_IMAGE, name, {
        "conditions": [condition("Captured", "True", "Captured", "on the LU"),
                       condition("Resumed", "False", "NotRequested", "spec.resume is false")],
        "lu": {"claimName": "lu-web-1", "usedBytes": 1 << 20}, "bootId": "b0",
    })  # fmt: skip


def test_resume_sets_spec_resume_and_waits_for_resumed(kubectl_lparkube, objects: Objects) -> None:
    """Plays the hibernation controller: the test writes the status the operator would. The
    Resumed=False written for generation 1 must not end the wait for generation 2."""
    objects.partition("web-1")
    captured_image(objects, "img")
    run = kubectl_lparkube("resume", "img")
    assert run.next_line() == f"hibernationimage.{GROUP}/img resume requested"
    image = objects.get(HIBERNATION_IMAGE, "img")
    assert image["spec"]["resume"] is True and image["spec"]["partitionName"] == "web-1"
    assert image["metadata"]["generation"] == 2
    assert run.next_line() == "waiting for the operator to resume the partition"
    assert run.running()
    objects.patch_status(HIBERNATION_IMAGE, "img", {"conditions": [
        condition("Captured", "True", "Captured", "on the LU", 2),
        condition("Resumed", "Unknown", "Starting", "the VM is starting", 2)]})  # fmt: skip
    assert run.next_line() == "resuming: Starting: the VM is starting"
    objects.patch_status(HIBERNATION_IMAGE, "img", {"conditions": [
        condition("Captured", "True", "Captured", "on the LU", 2),
        condition("Resumed", "True", "SameBootId", "the guest resumed", 2)]})  # fmt: skip
    assert run.next_line() == "resumed: boot b0"
    assert run.finish() == (0, "", "")


def test_resume_refused_exits_1_with_the_reason(kubectl_lparkube, objects: Objects) -> None:
    """Plays the hibernation controller: the test writes the status the operator would."""
    objects.partition("web-1")
    captured_image(objects, "img")
    run = kubectl_lparkube("resume", "img")
    run.next_line()
    run.next_line()
    why = "disk data: claim web-1-data was replaced (uid changed)"
    objects.patch_status(HIBERNATION_IMAGE, "img", {"conditions": [
        condition("Resumed", "False", "AdapterConfigurationChanged", why, 2)]})  # fmt: skip
    assert run.next_line() == f"not resumed: AdapterConfigurationChanged: {why}"
    code, _, err = run.finish()
    assert (code, err) == (1, f"error: not resumed: AdapterConfigurationChanged: {why}\n")


def test_resume_needs_a_captured_image_that_exists(
    plugin, objects: Objects, namespace: str
) -> None:
    objects.partition("web-1")
    objects.create(HIBERNATION_IMAGE, {"metadata": {"name": "raw"},
                                       "spec": {"partitionName": "web-1"}})  # fmt: skip
    refused = plugin("resume", "raw", "-n", namespace)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: hibernationimage.{GROUP}/raw is not captured (no reason given): nothing to resume"
    )
    assert objects.get(HIBERNATION_IMAGE, "raw")["spec"]["resume"] is False
    missing = plugin("resume", "ghost", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f'error: hibernationimages.lparkube.io "ghost" not found in namespace "{namespace}"'
    )


# --- restart ------------------------------------------------------------------------------------


def rr_steps(**states: str | tuple[str, str]) -> list[dict[str, Any]]:
    """Every step in order, as the controller lists them: ``Validating="Done"`` or
    ``Validating=("Failed", message)``; the others Pending."""
    steps = []
    for name in rr.STEPS:
        state = states.get(name, rr.PENDING)
        status, message = state if isinstance(state, tuple) else (state, "")
        steps.append({"name": name, "status": status, "message": message,
                      **({"startTime": NOW} if status != rr.PENDING else {})})  # fmt: skip
    return steps


def test_restart_prints_each_step_as_it_changes_and_exits_0_on_restart_succeeded(
    kubectl_lparkube, objects: Objects
) -> None:
    """Plays the RemoteRestart controller: the test writes the status the operator would."""
    objects.partition("web-1")
    run = kubectl_lparkube("restart", "web-1", "--to", "node-b", "--deadline", "5m")
    name = created_name(run.next_line(), REMOTE_RESTART)
    assert re.fullmatch(r"web-1-restart-[a-z]{5}", name), name
    assert objects.get(REMOTE_RESTART, name)["spec"] == {
        "partitionName": "web-1", "targetNodeName": "node-b", "deadline": "5m",
    }  # fmt: skip
    assert run.next_line() == "waiting for the operator to start the restart"

    running = [condition("Complete", "False", "InProgress", "validating")]
    objects.patch_status(REMOTE_RESTART, name, {
        "step": rr.VALIDATING, "steps": rr_steps(Validating="Running"), "conditions": running,
    })  # fmt: skip
    assert run.next_line() == "Validating Running"
    waiting = "node node-a is NotReady and not fenced: taint it"
    objects.patch_status(REMOTE_RESTART, name, {
        "step": rr.LOCKING_ADAPTERS, "sourceNodeName": "node-a", "targetNodeName": "node-b",
        "steps": rr_steps(Validating=("Done", "target node-b"),
                          LockingAdapters=("Running", waiting)),
    })  # fmt: skip
    assert [run.next_line(), run.next_line()] == [
        "Validating Done target node-b",
        f"LockingAdapters Running {waiting}",
    ]
    objects.patch_status(REMOTE_RESTART, name, {"progress": {"completedSteps": 1}})  # no step
    assert run.running()

    done = {n: rr.DONE for n in rr.STEPS}
    objects.patch_status(REMOTE_RESTART, name, {
        "step": rr.UNLOCKING, "terminationState": rr.RESTART_SUCCEEDED, "terminationCode": 0,
        "steps": rr_steps(**{**done, rr.VALIDATING: (rr.DONE, "target node-b"),
                             rr.RESTORING_MEMORY: rr.SKIPPED}),
        "conditions": [condition("Complete", "True", "RestartSucceeded", "runs on node-b")],
    })  # fmt: skip
    rest = [run.next_line() for _ in range(len(rr.STEPS) - 1)]
    assert rest == [
        "LockingAdapters Done", "GatheringConfiguration Done", "ConfiguringTargetAdapters Done",
        "CheckingAdapters Done", "RestoringMemory Skipped", "Booting Done", "Verifying Done",
        "Unlocking Done",
    ]  # fmt: skip
    assert (
        run.next_line()
        == "RestartSucceeded: partition web-1 runs on node node-b (from node node-a)"
    )
    assert run.finish() == (0, "", "")


def test_restart_exits_1_on_restart_failed_with_the_cause(
    kubectl_lparkube, objects: Objects
) -> None:
    """Plays the RemoteRestart controller: the test writes the status the operator would."""
    objects.partition("web-1")
    run = kubectl_lparkube("restart", "web-1", "--to", "node-c")
    name = created_name(run.next_line(), REMOTE_RESTART)
    run.next_line()
    why = "node node-c is not Ready (KubeletNotReady)"
    objects.patch_status(REMOTE_RESTART, name, {
        "step": rr.VALIDATING, "steps": rr_steps(Validating=("Failed", why)),
        "terminationState": rr.RESTART_FAILED, "terminationCode": 1,
        "conditions": [condition("Complete", "False", "TargetNotReady", why)],
    })  # fmt: skip
    assert run.next_line() == f"Validating Failed {why}"
    assert run.next_line() == f"RestartFailed: TargetNotReady: {why}"
    code, rest, err = run.finish()
    assert (code, rest, err) == (1, "", f"error: RestartFailed: TargetNotReady: {why}\n")


def test_restart_from_an_image_no_wait_and_what_is_refused_before_creating(
    plugin, objects: Objects, namespace: str
) -> None:
    objects.partition("web-1")
    captured_image(objects, "web-1-img")
    done = plugin("restart", "web-1", "--from", "web-1-img", "-n", namespace, "--no-wait")
    assert done.returncode == 0, done.stderr  # returned: no operator runs, a wait never would
    name = created_name(done.stdout.strip(), REMOTE_RESTART)
    assert objects.get(REMOTE_RESTART, name)["spec"] == {
        "partitionName": "web-1", "hibernationImageName": "web-1-img", "deadline": "15m",
    }  # fmt: skip

    missing = plugin("restart", "ghost", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f'error: partitions.lparkube.io "ghost" not found in namespace "{namespace}"'
    )
    no_image = plugin("restart", "web-1", "--from", "nope", "-n", namespace)
    assert no_image.returncode == 1
    assert no_image.stderr.strip() == (
        f'error: hibernationimages.lparkube.io "nope" not found in namespace "{namespace}"'
    )
    assert [r["metadata"]["name"] for r in objects.list(REMOTE_RESTART)] == [name]


def test_a_restart_that_never_ends_times_out_and_status_shows_it_under_way(
    plugin, objects: Objects, namespace: str
) -> None:
    objects.partition("web-1")
    done = plugin("restart", "web-1", "-n", namespace, "--timeout", "2s")
    assert done.returncode == 1
    name = created_name(done.stdout.splitlines()[0], REMOTE_RESTART)
    assert done.stderr.strip() == (
        f"error: timed out after 2s waiting for remoterestart.lparkube.io/{name} (waiting for the "
        f"operator to start the restart); it goes on: kubectl get remoterestarts {name} "
        f"-n {namespace}"
    )
    objects.patch_status(REMOTE_RESTART, name, {
        "step": rr.LOCKING_ADAPTERS, "sourceNodeName": "node-a", "targetNodeName": "node-b",
        "steps": rr_steps(Validating="Done", LockingAdapters="Running"),
        "progress": {"completedSteps": 1, "totalSteps": 8},
    })  # fmt: skip
    shown = plugin("status", "web-1", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    [line] = [line for line in shown.stdout.splitlines() if line.startswith("Restart:")]
    assert line.startswith(
        f"Restart:     {name} at LockingAdapters Running (1/8), node-a -> node-b, "
    ), line


# --- status -------------------------------------------------------------------------------------


def test_status_shows_the_partition_and_its_hibernation_images(
    plugin, objects: Objects, namespace: str
) -> None:
    objects.partition("web-1", viosClusterName="thin", paging={})
    objects.partition("web-2")
    objects.patch_status(PARTITION, "web-1", {
        "vmName": "web-1", "nodeName": "node-a",
        "addresses": [{"interface": "default", "ip": "10.0.0.5"}],
        "conditions": [condition("Ready", "True", "Ready", "VM running, agent connected"),
                       condition("AgentConnected", "True", "Heartbeat", "reported")],
        "agent": {"version": "0.1.0", "kernelRelease": "6.1.0-28-amd64",
                  "lastHeartbeatTime": NOW, "applications": 2, "endpoint": "10.0.0.5:8443"},
        "paging": {"claimName": "lu-web-1", "size": "1280Mi"},
    })  # fmt: skip
    captured_image(objects, "web-1-img")
    objects.create(HIBERNATION_IMAGE, {"metadata": {"name": "web-2-img"},
                                       "spec": {"partitionName": "web-2"}})  # fmt: skip
    shown = plugin("status", "web-1", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"Partition:   {namespace}/web-1"
    assert lines[1] == "VM:          web-1 on node node-a, 10.0.0.5"
    assert [line.split()[:3] for line in lines[3:6]] == [
        ["TYPE", "STATUS", "REASON"], ["AgentConnected", "True", "Heartbeat"],
        ["Ready", "True", "Ready"],
    ]  # fmt: skip
    assert lines[6].startswith("Agent:       at 10.0.0.5:8443, version 0.1.0, kernel 6.1.0-28")
    assert lines[7] == "Paging:      LU lu-web-1 (1280Mi)"
    assert lines[8] == "Hibernation: no run reported"
    assert lines[9] == "Restart:     none under way"
    assert lines[10] == "Hibernation images:"
    assert [line.split()[:3] for line in lines[11:]] == [
        ["NAME", "STATE", "SIZE"], ["web-1-img", "Captured", "1.0"],
    ]  # only web-1's  # fmt: skip

    missing = plugin("status", "ghost", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f'error: partitions.lparkube.io "ghost" not found in namespace "{namespace}"'
    )


# --- failover status ----------------------------------------------------------------------------


def field_texts(lines: list[str]) -> dict[str, list[str]]:
    """``Label: text`` fields of a screen (before its tables): each field's texts, a wrapped
    text joined again (its next lines are indented two more than the field's)."""
    fields: dict[str, list[str]] = {}
    texts: list[str] = []
    for line in lines:
        if line.startswith(" " * 15):
            texts[-1] += " " + line.strip()
        elif line.startswith(" " * 13):
            texts.append(line.strip())
        elif re.match(r"[A-Z][\w -]*:  ", line):
            label, text = line.split(":", 1)
            texts = fields[label] = [text.strip()]
        else:
            break  # the first table's header
    return fields


def test_failover_status_shows_settings_the_failover_under_way_escalation_images_and_history(
    kubectl_lparkube, plugin, objects: Objects, namespace: str
) -> None:
    """Plays the failover controller: a second failure within the window of a consistency
    restart is restarting from the boot image (its node fenced); one more would stop the
    partition until the window closes."""
    now = datetime.now(UTC).replace(microsecond=0)

    def at(delta: timedelta) -> str:
        return rfc3339(now + delta)

    objects.partition("web-1", failover={
        "enabled": True, "bootImage": {"pvcName": "web-1-boot"}, "escalationWindow": "10m",
        "nodeSelector": {"lparkube.io/failover": "yes"},
        "selfFence": {"lease": "15s", "watchdogTimeout": "10s"},
    })  # fmt: skip
    fenced = "node node-a carries node.kubernetes.io/out-of-service"
    first = {
        "id": "f1", "reason": "VMIFailed", "message": "VMI failed on node node-b (Crashed)",
        "detectedAt": at(-timedelta(minutes=5)), "image": "Consistency",
        "imageReason": "the newest consistency image", "result": "Done",
        "completedAt": at(-timedelta(minutes=5) + timedelta(seconds=40)),
    }  # fmt: skip
    second = {
        "id": "f2", "reason": "NodeLost", "message": "node node-a is not Ready",
        "detectedAt": at(-timedelta(minutes=2)), "phase": "Restarting", "image": "Boot",
        "imageReason": "a second failure within 10m: escalated to the boot image",
        "nodeName": "node-a", "restartName": "web-1-failover-f2",
        "fence": {"by": "NodeFenced", "at": at(-timedelta(seconds=60)), "message": fenced},
    }  # fmt: skip
    objects.patch_status(PARTITION, "web-1", {
        "conditions": [{**condition("FailedOver", "False", "FailingOver", fenced),
                        "lastTransitionTime": at(-timedelta(seconds=60))}],
        "agent": {"watchdog": {"device": "/dev/watchdog", "timeoutSeconds": 10, "armed": True}},
        "failover": {
            "failures": 2, "lastFailureTime": second["detectedAt"], "lastImage": "Consistency",
            "consistencyImages": [{"name": "web-1-ci-a", "time": at(-timedelta(hours=20)),
                                   "consistency": "Application", "saveEvent": "web-1-save-a"}],
            "nextConsistencyImageTime": at(timedelta(minutes=40)),
            "leaseExpiry": at(-timedelta(seconds=90)), "current": second, "history": [first],
        },
    })  # fmt: skip

    run = kubectl_lparkube("failover", "status", "web-1")  # the context's namespace: no -n
    code, out, err = run.finish()
    assert (code, err) == (0, "")
    lines = out.splitlines()
    fields = field_texts(lines)
    closes = at(timedelta(minutes=8))  # the second failure + the 10m window
    assert fields.pop("Partition") == [f"{namespace}/web-1"]
    [lease] = fields.pop("Lease")
    assert re.fullmatch(rf"ran out \d+s ago \({at(-timedelta(seconds=90))}\)", lease), lease
    [shown] = fields.pop("Condition")
    assert re.fullmatch(rf"False FailingOver, \d+s ago: {fenced}", shown), shown
    under_way, failures, escalation = (
        fields.pop(k) for k in ("Under way", "Failures", "Escalation")
    )
    assert re.fullmatch(r"NodeLost on node node-a 2m(\d+s)? ago, now Restarting: node node-a "
                        r"is not Ready", under_way[0]), under_way  # fmt: skip
    assert (
        under_way[1]
        == "restarts from Boot: a second failure within 10m: escalated to the boot image"
    )
    assert re.fullmatch(rf"fenced: NodeFenced \d+s ago: {fenced}", under_way[2]), under_way
    assert under_way[3:] == ["restart web-1-failover-f2"]
    assert re.fullmatch(r"2 recorded, 2 in the last 10m, the last 2m(\d+s)? ago", failures[0])
    assert escalation[0] == (
        "the next failure after this failover stops it (FailedOver=False, RepeatedFailures): "
        "failed again within 10m of a boot-image restart"
    )
    assert re.fullmatch(rf"from {closes} \(in (7m\d+s|8m)\) it restarts from Consistency: "
                        r"the newest consistency image", escalation[1]), escalation  # fmt: skip
    assert fields == {
        "Failover": ["enabled, escalation window 10m, boot image PVC web-1-boot"],
        "Nodes": ["lparkube.io/failover=yes (and the VM's own constraints)"],
        "Self-fence": ["lease 15s, watchdog timeout 10s: the guest counts as off 30s after its "
                       "last lease"],
        "Watchdog": ["armed, /dev/watchdog, timeout 10s"],
    }  # fmt: skip
    tables = lines[lines.index("History (newest last):") - 3 :]
    assert re.fullmatch(r"Consistency images \(every 1h, 3 kept; the next due in (39|40)m\):",
                        tables[0]), tables  # fmt: skip
    assert [row.split() for row in tables[1:3]] == [
        ["NAME", "CONSISTENCY", "AGE", "SAVEEVENT"], ["web-1-ci-a", "Application", "20h",
                                                       "web-1-save-a"],
    ]  # fmt: skip
    assert tables[3] == "History (newest last):"
    assert tables[4].split() == ["DETECTED", "REASON", "IMAGE", "RESULT", "TOOK", "MESSAGE"]
    row = tables[5].split()
    assert re.fullmatch(r"5m\d*s?", row[0]) and row[1:] == [
        "VMIFailed", "Consistency", "Done", "40s", "VMI", "failed", "on", "node", "node-b",
        "(Crashed)",
    ], tables  # fmt: skip
    assert len(tables) == 6

    helped = plugin("failover", "status", "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: kubectl lparkube failover status")
    missing = plugin("failover", "status", "ghost", "-n", namespace)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.strip() == (
        f'error: partitions.lparkube.io "ghost" not found in namespace "{namespace}"'
    )


# --- no cluster, no CRDs ------------------------------------------------------------------------


def test_no_cluster_is_named_with_exit_1(plugin, kubeconfig: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(kubeconfig.read_text())
    port = free_port()  # nothing listens there
    for cluster in data["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    nowhere = tmp_path / "nowhere"
    nowhere.write_text(yaml.safe_dump(data))
    for verb in (["save", "web-1"], ["status", "web-1"], ["resume", "img"]):
        done = subprocess.run(
            [str(EXECUTABLE), *verb, "--kubeconfig", str(nowhere)],
            capture_output=True, text=True, timeout=60, env=plugin_env(), check=False,
        )  # fmt: skip
        assert done.returncode == 1
        assert done.stderr.startswith(
            f"error: cannot reach the Kubernetes API server at https://127.0.0.1:{port}: "
        ), done.stderr
        assert "Connection refused" in done.stderr
    unreadable = subprocess.run(
        [str(EXECUTABLE), "status", "web-1", "--kubeconfig", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=60, env=plugin_env(), check=False,
    )  # fmt: skip
    assert unreadable.returncode == 1
    assert unreadable.stderr.startswith(f"error: cannot load the kubeconfig {tmp_path}/absent")


@pytest.fixture(scope="module")
def partitions_only_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalControlPlane]:
    """A control plane of its own with only the Partition CRD (an lparkube without
    SaveEvents or HibernationImages); the session's has all of them."""
    crds = tmp_path_factory.mktemp("partition-crd-only")
    name = f"{GROUP}_{PARTITION.plural}.yaml"
    (crds / name).write_text((REPO_ROOT / "crds" / name).read_text())
    with LocalControlPlane(tmp_path_factory.mktemp("partitions-only")) as plane:
        with config.new_client_from_config(config_file=str(plane.kubeconfig)) as api:
            install_crds(api, crds)
        yield plane


def test_a_missing_crd_is_named_with_what_to_install(
    partitions_only_cluster: LocalControlPlane,
) -> None:
    kubeconfig = partitions_only_cluster.kubeconfig
    with config.new_client_from_config(config_file=str(kubeconfig)) as api:
        Objects(api, "default").partition("web-1")

    def plugin_there(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(EXECUTABLE), *args, "--kubeconfig", str(kubeconfig)],
            capture_output=True, text=True, timeout=60, env=plugin_env(), check=False,
        )  # fmt: skip

    hint = (
        "install lparkube's CRDs (helm install lparkube charts/lparkube, or kubectl apply -f crds/)"
    )
    saved = plugin_there("save", "web-1")  # the Partition is there, SaveEvents are not
    assert saved.returncode == 1
    assert saved.stderr.strip() == (
        f"error: the server does not serve saveevents.lparkube.io (lparkube.io/v1alpha1): {hint}"
    )
    hibernated = plugin_there("hibernate", "web-1")
    assert hibernated.returncode == 1
    assert "does not serve hibernationimages.lparkube.io" in hibernated.stderr
    resumed = plugin_there("resume", "img")
    assert resumed.returncode == 1
    assert "does not serve hibernationimages.lparkube.io" in resumed.stderr
    restarted = plugin_there("restart", "web-1")
    assert restarted.returncode == 1
    assert "does not serve remoterestarts.lparkube.io" in restarted.stderr
    shown = plugin_there("status", "web-1")  # the Partition still shows; its images cannot
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-3].startswith(
        "Restart:     the server does not serve remoterestarts.lparkube.io"
    )
    assert shown.stdout.splitlines()[-2:] == [
        "Hibernation images:",
        "  the server does not serve hibernationimages.lparkube.io (lparkube.io/v1alpha1): " + hint,
    ]
