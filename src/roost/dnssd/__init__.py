"""Finding hubs with DNS-SD (``_roost._tcp.local.``): records (pure) and the zeroconf
adapter (`roost.dnssd.aio`). A record is a hint; trust comes from TLS and announcements."""

from roost.dnssd.records import SERVICE_TYPE, HubRecord, parse_record, txt_properties

__all__ = ["SERVICE_TYPE", "HubRecord", "parse_record", "txt_properties"]
