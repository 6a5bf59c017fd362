"""The broker side: `mosquitto.py` (a private Mosquitto on a free loopback
port, with TLS and the ACL), `certs.py` (the dev PKI and the certificates
a board or command is given), `probe.py` (a raw MQTT CONNECT to ask a broker
whether it answers), `pick.py` (the broker a command uses: the --broker URL
or a private Mosquitto).

May import only emulator.validation; never boards, observers or the CLI.
"""
