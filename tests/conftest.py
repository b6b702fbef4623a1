import pytest

from personal_rm.embed import MiniLMEncoder


@pytest.fixture(scope="session")
def minilm() -> MiniLMEncoder:
    """The real offline encoder, loaded once per session (~6 s)."""
    return MiniLMEncoder()


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole test session (start-up dominates small jobs); a new
    private instance, never a cluster that something else started on this machine."""
    import ray

    from actors.local_ray import init_local_ray

    init_local_ray(num_cpus=2, object_store_memory=300 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()
