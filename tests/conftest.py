import pytest

from personal_rm.embed import MiniLMEncoder


@pytest.fixture(scope="session")
def minilm() -> MiniLMEncoder:
    """The real offline encoder, loaded once per session (~6 s)."""
    return MiniLMEncoder()


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole test session (start-up dominates small jobs)."""
    import ray

    ray.init(
        num_cpus=2, object_store_memory=300 * 1024**2, include_dashboard=True, log_to_driver=False
    )
    yield ray
    ray.shutdown()
