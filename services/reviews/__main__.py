from shared.run import serve

serve("services.reviews.app:create_app")
