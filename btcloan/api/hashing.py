import hashlib


def secret_hash(secret: str) -> str:
    """Tokens and keys carry 256 random bits, so a plain SHA-256 is a safe at-rest form."""
    return hashlib.sha256(secret.encode()).hexdigest()
