from fastapi.testclient import TestClient

from editserve.client import Client

PROMPT = "The mother tongue of Danielle Darrieux is"
TARGET = "English"
OTHER_PROMPT = "Australia's capital city is called"
OTHER_TARGET = "Canberra, a planned city"
GOLD = "Gold has the chemical symbol"
UNRELATED = "Photosynthesis turns sunlight into"


def wait_ready(app, timeout: float = 600.0) -> None:
    """Until the app's background load is done; raises what made it fail, as a start would."""
    assert app.state.loaded.wait(timeout), "the app did not load in time"
    if app.state.load_error is not None:
        raise app.state.load_error


def stop(client: TestClient) -> None:
    """Shut the app down (its lifespan's exit), as a server stop would; safe to call twice."""
    if not getattr(client, "_stopped", False):
        client.__exit__(None, None, None)
        client._stopped = True


# The typed client (editserve.client) on the test's own client: the tests drive the API the way users'
# Python code does, and a mismatch between the client and the routes fails here.
def create(client: TestClient, prompt: str = PROMPT, target: str = TARGET, **extra) -> dict:
    return Client(http=client).create_edit(prompt, target, **extra).model_dump(mode="json")


def generate(client: TestClient, prompt: str, max_new_tokens: int = 6) -> dict:
    return Client(http=client).generate(prompt, max_new_tokens=max_new_tokens).model_dump(mode="json")


def listing(client: TestClient, **params) -> dict:
    return Client(http=client).list_edits(**params).model_dump(mode="json")


def assert_error(response, status: int, *words: str) -> str:
    """The response is `status` with a {"detail": str} body mentioning every word."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    for word in words:
        assert word in body["detail"], (word, body["detail"])
    return body["detail"]
