"""Pallas kernels, installed under the import name ``tokenrl.kernels``.

Each module holds a kernel body, a validating wrapper (custom_vjp, block sizes, ``interpret``
flag) and a ``*_reference`` written in plain jnp.
"""
