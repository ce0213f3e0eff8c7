"""pybench.bench: the harness — suites, typed cells, the driver and its workers, executors, results and reports.

Data flows one way: a suite file is read into a :class:`pybench.bench.config.Suite` and expanded into frozen
:class:`pybench.bench.config.Cell` values (:mod:`.suite`); the driver (:mod:`.driver`, or an executor of
:mod:`.executors`) sends them to worker processes over :mod:`.protocol`; a worker (:mod:`.worker`) builds the dense
model (:mod:`.dense`), prunes it through the engine's public API (:mod:`.pruning`), measures it (:mod:`.metrics`)
and sends records back; the store (:mod:`.results`) feeds :mod:`.report`, :mod:`.compare` and :mod:`.shard`.
The harness reaches the engine only through ``pybench``'s public API and the criteria / schedules registries.
"""
