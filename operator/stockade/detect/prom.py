"""Usage metrics as a signal: PromQL against a configured Prometheus, every STOCKADE_PROMETHEUS_INTERVAL.

* GPU use per pod from NVIDIA's DCGM exporter (``DCGM_FI_DEV_GPU_UTIL``, ``DCGM_FI_DEV_FB_USED``,
  labelled with the pod's ``namespace`` and ``pod``): activity in a pod without a GPU grant, or on
  more GPUs than it was granted;
* bytes sent per pod (``container_network_transmit_bytes_total``, cAdvisor) above
  STOCKADE_NETWORK_BYTES_RATE_LIMIT.

Only series of pods in run namespaces count; a finding is reported again for the same pod only
after STOCKADE_METRICS_REPEAT_SECONDS, so a pod that keeps a GPU busy is one violation, not one per poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from stockade import metrics
from stockade.api.models import AgentRunSpec, Violation
from stockade.detect import rules
from stockade.detect.config import DetectSettings
from stockade.detect.respond import Incident, Responder
from stockade.store import RunKey, Store

log = logging.getLogger("stockade.prometheus")

GPU_UTIL = 'DCGM_FI_DEV_GPU_UTIL{namespace!="",pod!=""}'
GPU_MEMORY = 'DCGM_FI_DEV_FB_USED{namespace!="",pod!=""}'
TX_RATE = 'sum by (namespace, pod) (rate(container_network_transmit_bytes_total{{namespace!="",pod!=""}}[{window}]))'
# Prometheus renames a scraped label that clashes with a target label to exported_<name>: then that
# one is the workload's and the plain one the exporter's own. Older DCGM exporters said pod_namespace.
NAMESPACE_LABELS = ("exported_namespace", "namespace", "pod_namespace")
POD_LABELS = ("exported_pod", "pod", "pod_name")
GPU_LABELS = ("gpu", "GPU_I_ID", "UUID", "device")

Series = list[tuple[dict[str, str], float]]


def _label(metric: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((metric[n] for n in names if metric.get(n)), None)


class Poller:
    def __init__(self, settings: DetectSettings, store: Store, responder: Responder, now: Callable[[], str]) -> None:
        self.settings = settings
        self.url = settings.prometheus_url.rstrip("/")
        self.store = store
        self.responder = responder
        self.now = now
        self._reported: dict[tuple[str, str, str], float] = {}
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.standby: Callable[[], bool] = lambda: False  # another replica leads: it polls, this one waits

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        log.info("polling %s every %ss", self.url, self.settings.prometheus_interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.prometheus_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout)
        while True:
            started = time.monotonic()
            try:
                if not self.standby():
                    await self.poll_once()
            except (aiohttp.ClientError, TimeoutError, ValueError) as err:
                metrics.SIGNALS.labels(source="metrics", outcome="query-failed").inc()
                log.warning("querying Prometheus at %s failed: %s", self.url, err)
            except Exception:
                log.exception("a Prometheus poll failed unexpectedly")
            await asyncio.sleep(max(0.0, self.settings.prometheus_interval - (time.monotonic() - started)))

    async def query(self, promql: str) -> Series:
        assert self._session is not None
        async with self._session.get(f"{self.url}/api/v1/query", params={"query": promql}) as resp:
            body = await resp.json(content_type=None)
        if body.get("status") != "success":
            raise ValueError(f"{promql}: {body.get('errorType')}: {body.get('error')}")
        out: Series = []
        for item in (body.get("data") or {}).get("result") or []:
            try:
                out.append((dict(item.get("metric") or {}), float(item["value"][1])))
            except (KeyError, IndexError, TypeError, ValueError):
                continue
        return out

    async def poll_once(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.prometheus_timeout))
        util, memory = await asyncio.gather(self.query(GPU_UTIL), self.query(GPU_MEMORY))
        found = self.judge_gpus(util, memory)
        if self.settings.network_bytes_rate_limit > 0:
            found += self.judge_rates(await self.query(TX_RATE.format(window=self.settings.network_rate_window)))
        for key, violation, signal in found:
            self.responder.submit(key, [Incident(violation, signal=signal)])
            metrics.SIGNALS.labels(source="metrics", outcome="accepted").inc()

    def _target(self, namespace: str, pod: str) -> tuple[RunKey, AgentRunSpec, Mapping[str, Any]] | None:
        key = self.store.run_of_namespace(namespace)
        body = self.store.agentruns.get(key) if key else None
        live = self.store.get("Pod", namespace, pod)
        if key is None or body is None or live is None:
            return None
        spec = self.store.valid_spec(key)
        return (key, spec, live) if spec is not None else None

    def _fresh(self, namespace: str, pod: str, kind: str) -> bool:
        now = time.monotonic()
        last = self._reported.get((namespace, pod, kind))
        if last is not None and now - last < self.settings.metrics_repeat_seconds:
            return False
        self._reported[(namespace, pod, kind)] = now
        if len(self._reported) > 10000:
            self._reported = {k: t for k, t in self._reported.items() if now - t < self.settings.metrics_repeat_seconds}
        return True

    def judge_gpus(self, util: Series, memory: Series) -> list[tuple[RunKey, Violation, Any]]:
        samples: dict[tuple[str, str], list[rules.GpuSample]] = {}
        raw: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for series, is_util in ((util, True), (memory, False)):
            for metric, value in series:
                namespace, pod = _label(metric, NAMESPACE_LABELS), _label(metric, POD_LABELS)
                if not namespace or not pod or not self.store.is_run_namespace(namespace):
                    continue
                gpu = _label(metric, GPU_LABELS) or "?"
                sample = rules.GpuSample(gpu, util=value) if is_util else rules.GpuSample(gpu, memory_mib=value)
                samples.setdefault((namespace, pod), []).append(sample)
                raw.setdefault((namespace, pod), []).append({"metric": metric, "value": value})
        out = []
        for (namespace, pod), pod_samples in samples.items():
            target = self._target(namespace, pod)
            if target is None:
                continue
            key, spec, live = target
            found = rules.judge_gpu(live, pod_samples, spec.grant, self.now(),
                                    util_threshold=self.settings.gpu_util_threshold,
                                    memory_threshold_mib=self.settings.gpu_memory_threshold_mib)
            if found is not None and self._fresh(namespace, pod, found.kind):
                out.append((key, found, {"prometheus": self.url, "queries": [GPU_UTIL, GPU_MEMORY],
                                         "series": raw[(namespace, pod)]}))
        return out

    def judge_rates(self, rates: Series) -> list[tuple[RunKey, Violation, Any]]:
        out = []
        for metric, value in rates:
            namespace, pod = metric.get("namespace"), metric.get("pod")
            if not namespace or not pod or not self.store.is_run_namespace(namespace):
                continue
            target = self._target(namespace, pod)
            if target is None:
                continue
            found = rules.judge_egress_rate(pod, value, self.settings.network_bytes_rate_limit,
                                            self.settings.network_rate_window, self.now())
            if found is not None and self._fresh(namespace, pod, found.kind):
                out.append((target[0], found, {"prometheus": self.url, "metric": metric, "value": value}))
        return out
