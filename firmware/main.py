# Runs after boot.py on every reset. All logic lives in app.py so that the
# same entry point serves real boards and the emulator.
import app

app.main()
