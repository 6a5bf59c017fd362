# Runs first on every reset. Kept minimal: a crash here would stop the REPL
# from ever being reachable over USB.
import gc

gc.collect()
