"""HAL facts both adapters (esp32.py for a board, sim.py for the virtual rig) share.

ESP-NOW receive buffer. MicroPython's espnow driver (ports/esp32/modespnow.c) copies every
frame it receives, from the Wi-Fi task and after the MAC ACK has gone back to the sender, into
one ring buffer of `config(rxbuf=N)` bytes (allocated on the Python heap by active(True); a
later config(rxbuf=) applies at the next active(True)). Each frame takes ESPNOW_PKT_OVERHEAD
bytes of header (magic 1, length 1, time_ms 4, rssi 1, sender mac 6) plus its payload, and is
kept only while overhead + payload < the ring's free bytes (py/ringbuf.h keeps one byte spare:
an empty ring of N bytes has N - 1 free); otherwise it is dropped and counted in stats()[4].
So k full 250-byte frames need k * 263 + 2 bytes: the 526-byte default holds ONE.

ESPNOW_RXBUF, what a node asks for: 8 full frames (2106 bytes, 2.1 KB of a 112 KB heap). A node
is deaf only while its receive task waits behind other work: a flash write of an OTA page or a
ring spill (tens of ms), an Ed25519 manifest check (a few hundred ms on an ESP32, once per
campaign). In that time it can hear an OTA server's token-bucket burst (tx_burst 4, then
20 frames/s) plus a second server's, a few beacons and telemetry from its children; 8 frames
cover a 300 ms stall of one full-rate server with room for beacons, at 1.6 KB more than the
default. A drop costs an already-ACKed frame: the data path relies on end-to-end resends.
Measured on the rig (hil_tests/test_ota.py 6-node line, v1 -> v2, OTA heap raised to 320k so the
campaign completes): 28 OTA data frames dropped along the line with the 526-byte default
(20 at the node next to the gateway), none with 2106; the 8-node line and throughput tests
dropped none either way.
"""
ESPNOW_PKT_OVERHEAD = 13
ESPNOW_RXBUF = 8 * (ESPNOW_PKT_OVERHEAD + 250) + 2
