"""Hypothesis strategies for HCSP values (shared by the HCSP unit tests)."""

from __future__ import annotations

import string

from hypothesis import strategies as st

from roost.hcsp.documents import (
    MAX_CLIENTS,
    MAX_FEATURE_LENGTH,
    MAX_NAME_LENGTH,
    Endpoint,
    Hello,
    HubAddress,
    Redirect,
    Subscribe,
    Welcome,
    name_problem,
)

_B64URL = string.ascii_letters + string.digits + "-_"
_TOKEN_TAIL = string.ascii_letters + string.digits + "._-"
U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
CLIENTS = st.integers(min_value=0, max_value=MAX_CLIENTS)

hub_ids = st.text(_B64URL, min_size=22, max_size=22).map(lambda s: "hcsp:" + s)
device_ids = st.text(_B64URL, min_size=22, max_size=22).map(lambda s: "ab:" + s)
tokens = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from(string.ascii_letters + string.digits),
    st.text(_TOKEN_TAIL, max_size=MAX_FEATURE_LENGTH - 1),
)
features = st.lists(tokens, max_size=8).map(tuple)
endpoints = st.builds(
    Endpoint,
    st.ip_addresses().map(str),
    st.integers(min_value=1, max_value=0xFFFF),
)
hub_addresses = st.builds(HubAddress, hub_ids, endpoints)

subscribes = st.builds(Subscribe, hub_addresses, features, CLIENTS, CLIENTS, U64, U64)
# Section 4: a name is up to 64 printable characters without a space at either end, or
# absent (an older device); any Unicode text of that shape must round-trip.
names = st.text(min_size=1, max_size=MAX_NAME_LENGTH).filter(lambda n: name_problem(n) is None)
hellos = st.builds(Hello, device_ids, hub_ids, tokens, U64, st.none() | names)
welcomes = st.builds(Welcome, hub_ids, device_ids, features, CLIENTS)
redirects = st.builds(Redirect, hub_ids, device_ids, hub_addresses, features)
documents = st.one_of(subscribes, hellos, welcomes, redirects)
