"""GitHub App authentication: installation tokens for git over https and the REST API.

A token in an environment variable or a file lives as long as someone keeps
it current. A GitHub App installation instead mints tokens from the app's
private key; they last an hour, and PyGithub's ``AppInstallationAuth`` asks
for a new one before the old one expires. Both the node's git calls (through
``Credentials.token_source``) and ``gitmq github setup|check`` use it.
"""

from __future__ import annotations

import threading

from github import Auth, Github, GithubException

from gitmq.config import GithubAppConfig
from gitmq.errors import RemoteError


def installation_auth(app: GithubAppConfig) -> Auth.AppInstallationAuth:
    """PyGithub's auth for the installation (it refreshes its token by itself)."""
    key = app.private_key_file.read_text("utf-8")
    return Auth.AppAuth(app.app_id, key).get_installation_auth(app.installation_id)


class InstallationTokens:
    """A callable giving the installation's current token (a new one before expiry)."""

    def __init__(self, app: GithubAppConfig, base_url: str) -> None:
        self.app = app
        self.auth = installation_auth(app)
        # Github() hands the auth its requester (base_url, timeouts): it needs one to
        # ask GitHub for tokens. No retries: a failed cycle is retried next interval.
        self._github = Github(auth=self.auth, base_url=base_url, retry=None, timeout=30)
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            try:
                token: str = self.auth.token
            except GithubException as exc:
                said = exc.data.get("message") if isinstance(exc.data, dict) else exc.message
                raise RemoteError(
                    f"GitHub App {self.app.app_id} could not get a token for installation "
                    f"{self.app.installation_id}: GitHub answered {exc.status} ({said}); check "
                    f"github.app in the config (app id, key, installation id)"
                ) from None
            except OSError as exc:
                raise RemoteError(
                    f"GitHub App {self.app.app_id}: cannot reach GitHub for an installation "
                    f"token: {exc}"
                ) from None
        return token
