"""The dashboard tests share one harbor (trained versions, served traffic, a live control
plane): building it trains twice, so it is built once for the package."""

from tests.ui.harbor import harbor  # noqa: F401  (a fixture, requested by name)
from tests.ui.test_pages import as_role  # noqa: F401  (the logged-in browser fixture)
