"""What the add-on and the backend both read, stdlib + numpy (ships in the extension zip): the
protocol's message helpers and the model folder's manifest."""
