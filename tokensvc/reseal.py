"""client_secret_jwt secrets sealed anew under the server key the fleet signs with.

The server keeps such a secret sealed (AES-GCM under a subkey of a server key, keyring.py),
because it must compute the HMAC of the client's assertions. A key rotation ends by dropping
the old server key (README, "Running a fleet", step 2); a secret still sealed under it would
then open nowhere and its client could no longer authenticate. So, as the JWT signing keys
are (signing.py), every secret is sealed anew once the fleet signs with the new key.

Any worker may sweep; it costs one read when there is nothing to do. A sweep is complete when
every listed secret is under the signing key; it records "<key id> <writes>", where writes
counts the writes of records with a sealed secret (store/clients.py), so a secret written
under the old key by an instance that had not switched yet, after the sweep began, makes the
stamp stale and the next pass sweeps again. Each secret is swapped only if its record still
holds what was read (client_swap.lua), so a rotation or deletion meanwhile is never undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tokensvc.keyring import Keyring
from tokensvc.storage import SealedSecretStorage

log = logging.getLogger("tokensvc.reseal")


class Resealer:
    """One per worker: the sweep, run at start and then every heartbeat, since the key the fleet
    signs with changes only at a heartbeat (fleet.py)."""

    def __init__(self, store: SealedSecretStorage, keyring: Keyring, interval: float) -> None:
        self.store = store
        self.keyring = keyring
        self.interval = interval
        self._stop = asyncio.Event()
        # What was last warned about, so a standing problem is logged once, not every beat.
        self._warned: tuple[str, int] | None = None

    async def sweep(self) -> int:
        """Seal anew what is under another key; how many secrets were."""
        signing = self.keyring.signing_id
        writes, swept = await self.store.sealed_sweep_state()
        stamp = f"{signing} {writes}"
        if writes == 0 or swept == stamp:  # no sealed secret ever written, or all swept
            return 0
        resealed = lacking = changed = 0
        for client in await self.store.sealed_secret_clients():
            sealed = client.secret_sealed
            if sealed is None or Keyring.sealed_under(sealed) == signing:
                continue
            secret = self.keyring.unseal_client_secret(client.client_id, sealed)
            if secret is None:
                # Under a key this instance lacks (an instance with it may still reseal it).
                lacking += 1
                continue
            fresh = self.keyring.seal_client_secret(client.client_id, secret.decode("utf-8"))
            if await self.store.reseal_client_secret(client.client_id, sealed, fresh):
                resealed += 1
            else:
                changed += 1  # changed meanwhile: the next pass looks again
        if resealed:
            log.info("sealed %d client secret(s) anew under server key %s", resealed, signing)
        if lacking and self._warned != (signing, lacking):
            self._warned = (signing, lacking)
            log.warning("%d client_secret_jwt secret(s) are sealed under a server key this "
                        "instance does not hold; they will be sealed anew by one that does",
                        lacking)
        if not lacking and not changed:
            await self.store.mark_sealed_sweep(stamp)
        return resealed

    async def run(self) -> None:
        """Sweep every `interval` seconds for the life of the worker (a key switch happens
        at a fleet heartbeat, so this follows it within one)."""
        while not self._stop.is_set():
            try:
                await self.sweep()
            except Exception as exc:  # Redis down or slow: sweep again next time
                log.debug("sealing client secrets anew failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    def stop(self) -> None:
        self._stop.set()
