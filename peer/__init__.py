"""Terminal identity (store authority, enrollment, signed roster), the signed mutual-TLS links
between terminals and the Yjs sync over them (docs/protocol.md)."""
