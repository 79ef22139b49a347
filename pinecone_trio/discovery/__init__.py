"""Finding peers without being told: multicast LAN beacons (and, later, the DHT)."""
