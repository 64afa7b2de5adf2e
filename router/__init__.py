"""grayroute data plane: routing decisions and the KServe v2 proxy.

Never imports ``control_plane``: the hot process carries no ORM.
"""
