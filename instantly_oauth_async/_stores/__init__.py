"""Where state lives: the Store and Registry contracts, the in-process store, the connect guard's
claims, the guard against several processes on in-process stores."""
