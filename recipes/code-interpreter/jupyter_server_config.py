# Jupyter server settings of the code-interpreter template, read from /etc/jupyter (a system
# config dir Jupyter always loads). The server listens on localhost only, without a token or
# password: inside the sandbox every process is the sandbox's own, and from outside it is
# reached only through Paddock's proxy (which connects to 127.0.0.1:8888 inside the sandbox).
c = get_config()  # noqa: F821 (provided by Jupyter when it loads this file)

c.ServerApp.ip = "127.0.0.1"
c.ServerApp.port = 8888
# Fail instead of moving to another port: the ready check and clients expect 8888.
c.ServerApp.port_retries = 0
c.ServerApp.open_browser = False
c.ServerApp.root_dir = "/home/user"

# No token or password: API clients call the REST and WebSocket API directly.
c.ServerApp.token = ""
c.ServerApp.password = ""
# Token-less API clients send no XSRF cookie.
c.ServerApp.disable_check_xsrf = True
# Requests arriving through the proxy carry its host name (<port>-<sandbox>.<domain>), which
# Jupyter's DNS-rebinding check would refuse on a localhost-bound server.
c.ServerApp.allow_remote_access = True
c.ServerApp.allow_origin = "*"
