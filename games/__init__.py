"""One module a game: its RAM map, start driver, players, frame probe and RAM readers, and its record (GAME) for
collect.py's registry. Adding a game is one module here and one line in collect.GAMES; the model's code never imports
any of it."""
