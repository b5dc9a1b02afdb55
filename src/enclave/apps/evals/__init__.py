"""``enclave test``: an app's tests run against a live server, never a real API.

A test run creates a *draft* of the app on the server (a temporary, unlisted
copy) whose APIs point at a local :class:`~.fixtures.FixtureServer` and carry
no headers, so tests never reach a real system nor send real credentials.
Each test is a conversation; every step's answer is checked.

* :mod:`.fixtures`: the local HTTP server that serves the tests' canned responses.
* :mod:`.assertions`: pure checks of one answer (contains, regex, calls, citations...).
* :mod:`.judge`: rubric checks by a judge model through ``/v1/chat/completions``.
* :mod:`.runner`: drafts, conversations, repeats: :func:`~.runner.run_tests`.
* :mod:`.report`: results, JSON and JUnit files, baselines and the table.
* :mod:`.gate`: one pass over the tests for ``enclave apply --test``.
"""
