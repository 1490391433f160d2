"""editserve: a language-model server whose knowledge is edited over HTTP. `editserve.client` talks to it."""
