"""The distributed search's chief and roles: the one place that uses KerasTuner internals.

KerasTuner 1.4 has no public API to ask whether this process is the chief or
a worker of a distributed search (`KERASTUNER_TUNER_ID`,
`KERASTUNER_ORACLE_IP/PORT`), nor to run the chief's oracle server with a
hook after each trial (its `Tuner.search` on the chief blocks in its own
server loop, polling every 20 s, with no callback). Both come from
`keras_tuner.src` here, and nowhere else in the project; if an upgrade moves
them, this module is what to change.
"""

from __future__ import annotations

import os
import time
from concurrent import futures
from typing import Callable

import keras_tuner
from keras_tuner.src.distribute import utils as distribute_utils


def is_worker() -> bool:
    """This process is a worker of a distributed search (KERASTUNER_* variables)."""
    return distribute_utils.has_chief_oracle() and not distribute_utils.is_chief_oracle()


def is_chief() -> bool:
    """This process is the chief (oracle server) of a distributed search."""
    return distribute_utils.is_chief_oracle()


def serve_oracle(oracle: keras_tuner.Oracle, poll_seconds: float = 1.0,
                 on_trial_end: Callable[[], None] | None = None) -> None:
    """Serve `oracle` to the workers over gRPC until the search ends and every worker left.

    Listens on `$KERASTUNER_ORACLE_IP:$KERASTUNER_ORACLE_PORT`, like
    KerasTuner's own chief. `on_trial_end` is called (under the oracle's lock)
    after trials end.
    """
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief
    from keras_tuner.src.engine import oracle as oracle_module

    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if not server.add_insecure_port(address):
        raise OSError(f"The chief cannot listen on {address} (KERASTUNER_ORACLE_IP/PORT).")
    server.start()
    ended = len(oracle.end_order)
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_seconds)
            if on_trial_end is not None and len(oracle.end_order) != ended:
                with oracle_module.LOCKS[oracle]:
                    ended = len(oracle.end_order)
                    on_trial_end()
    finally:
        server.stop(grace=poll_seconds)
