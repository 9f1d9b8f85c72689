"""Errors raised by provisioning, one class per thing an operator can fix.

Every message says what is wrong and what to do about it, in one line, so that the CLI can print it as is
and exit non-zero. Messages never contain a PIN, a key or a whole certificate.
"""

from __future__ import annotations


class ProvisioningError(Exception):
    """Base class: a provisioning step refused to go on, for a reason the operator can act on."""

    exit_code = 1


class CaDirMissing(ProvisioningError):
    """The CA directory (or its ca.crt / key reference) does not exist."""


class CaExists(ProvisioningError):
    """``ca init`` would overwrite an existing CA."""


class KeyExists(ProvisioningError):
    """A private key (file, token object or identity directory) is already there; we never overwrite one."""


class ThingNameNotAllowed(ProvisioningError):
    """The thing name breaks the rules AWS IoT enforces (1-128 chars of [a-zA-Z0-9:_-])."""


class CsrInvalid(ProvisioningError):
    """The CSR cannot be parsed, its signature does not verify, or its key/subject is unacceptable."""


class CsrSignatureInvalid(CsrInvalid):
    """The CSR's self-signature does not verify: it was tampered with or corrupted."""


class UnsupportedKey(CsrInvalid):
    """A key type or size AWS IoT does not accept (we take EC P-256/P-384/P-521 and RSA >= 2048)."""


class PinMissing(ProvisioningError):
    """A PKCS#11 operation needs a PIN and none was given (environment variable or PIN file)."""


class WrongPin(ProvisioningError):
    """The token rejected the PIN."""


class PinLocked(ProvisioningError):
    """The token locked its user PIN after too many wrong attempts."""


class TokenNotFound(ProvisioningError):
    """No token with that label is visible through the PKCS#11 module."""


class Pkcs11ModuleError(ProvisioningError):
    """The PKCS#11 module cannot be loaded or failed."""


class TokenKeyNotFound(ProvisioningError):
    """The token has no private key with the configured label."""


class InvalidInput(ProvisioningError):
    """A file given to us cannot be read or parsed (certificate, key, serials list...)."""


class OutputExists(ProvisioningError):
    """An output file is already there and we were not asked to replace it."""


class BatchLocked(ProvisioningError):
    """Another batch is writing into the same output directory."""
