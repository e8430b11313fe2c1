"""The Flower ClientApp travels to Ray actors as its experiment (``client_app_for``), not as
pickled closures, and a process builds it once per experiment."""

from __future__ import annotations

import ray.cloudpickle as cloudpickle

from fedrec.engine.flower import FedRecClientApp, client_app_for, make_client_app


def test_client_app_pickles_as_its_experiment_and_is_built_once_per_process():
    cfg_json = '{"name": "pickled-app"}'
    app = make_client_app(cfg_json)
    assert isinstance(app, FedRecClientApp) and app.cfg_json == cfg_json

    def load():  # how Flower's simulation hands the app to an actor: a closure over it
        return app

    payload = cloudpickle.dumps(load)
    assert len(payload) < 4000  # the experiment's JSON, not the handlers' code
    back = cloudpickle.loads(payload)()
    assert back is client_app_for(cfg_json)  # the process's own app, built on first use
    assert cloudpickle.loads(payload)() is back
    assert back.cfg_json == cfg_json and back is not app
    assert set(back._registered_funcs) == set(app._registered_funcs)
