"""The dashboard tests share one harbor (trained versions, served traffic, a live control
plane): building it trains twice, so it is built once for the package."""

from tests.ui.harbor import harbor  # noqa: F401  (a fixture, requested by name)
