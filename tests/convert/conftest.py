"""Convert-test fixtures: the tiny random diffusers transformer of tests/models (saved once per module)."""
from tests.models.conftest import reference  # noqa: F401 - fixture
