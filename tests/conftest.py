import pytest

from personal_rm.embed import MiniLMEncoder


@pytest.fixture(scope="session")
def minilm() -> MiniLMEncoder:
    """The real offline encoder, loaded once per session (~6 s)."""
    return MiniLMEncoder()
