# Named constructors for the firmware's packet tuples (mqtt_codec) and
# session events (mqtt_session), so that tests read as before the firmware
# dropped its packet classes to save heap. Plain functions; runs on CPython
# and in the MicroPython VM. `as_tuple()` turns a packet of the test peer
# (mqtt_peer.py, still classes) into the firmware's tuple, to compare both.


def Connect(client_id, keepalive=60, clean_session=True, will_topic=None, will_payload=b"",
            will_qos=0, will_retain=False, username=None, password=None):
    return (1, client_id, keepalive, clean_session, will_topic, will_payload, will_qos, will_retain,
            username, password)


def Connack(session_present=False, return_code=0):
    return (2, session_present, return_code)


def Publish(topic, payload, qos=0, retain=False, dup=False, packet_id=None, size=None):
    return (3, topic, payload, qos, retain, dup, packet_id, size)


def Puback(packet_id):
    return (4, packet_id)


def Subscribe(packet_id, topics):
    return (8, packet_id, topics)


def Suback(packet_id, return_codes):
    return (9, packet_id, return_codes)


def Unsubscribe(packet_id, topics):
    return (10, packet_id, topics)


def Unsuback(packet_id):
    return (11, packet_id)


def Pingreq():
    return (12,)


def Pingresp():
    return (13,)


def Disconnect():
    return (14,)


# session events
def Connected(session_present):
    return (2, session_present, 0)


def ConnectionRefused(return_code, reason):
    return (16, return_code, reason)


def LinkDead(reason):
    return (17, reason)


Message = Publish
PublishAcked = Puback
Subscribed = Suback
Unsubscribed = Unsuback

MESSAGE = 3
REFUSED = 16
LINK_DEAD = 17

_TYPES = {"Connect": 1, "Connack": 2, "Publish": 3, "Puback": 4, "Subscribe": 8, "Suback": 9,
          "Unsubscribe": 10, "Unsuback": 11, "Pingreq": 12, "Pingresp": 13, "Disconnect": 14}


def as_tuple(p):
    """A packet as the firmware's tuple: a peer object is converted, a tuple
    is returned as it is."""
    if isinstance(p, tuple):
        return p
    return (_TYPES[type(p).__name__],) + tuple(getattr(p, n) for n in p._FIELDS)


def receive(s, data, now):
    # Bytes into a Session as the client's reader puts them there (into
    # decoder.space(), then received()), each piece parsed at once, so a
    # ProtocolError is raised here; the events wait in the session for
    # next_event(). DISCONNECTED (0) ends it.
    mv = memoryview(data)
    got = []
    while True:
        e = s.next_event()
        while e is not None:
            got.append(e)
            e = s.next_event()
        if not len(mv) or s.state == 0:
            break
        space = s.decoder.space()
        n = min(len(space), len(mv))
        assert n, "receive buffer full"
        space[:n] = mv[:n]
        s.received(n, now)
        mv = mv[n:]
    s._events[:0] = got
